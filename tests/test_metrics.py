"""QA metrics on hand-worked cases (SQuAD normalisation, prefix exact match, token F1)."""

import pytest

from util import exact_match, f1_score, normalize_answer


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("The  Eiffel   Tower!", "eiffel tower"),  # article, punctuation, repeated spaces
        ("an apple, a day", "apple day"),  # every article goes
        ("Theatre anthem", "theatre anthem"),  # articles only as whole words
        ("  A.B.C.  ", "abc"),  # "A" inside a token is not an article once dots go
        ("\tNew\nYork ", "new york"),  # tabs and newlines fold to one space
        ("O'Neil's (1990s) - U.S.", "oneils 1990s us"),
        ("the", ""),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize(
    "prediction, answer, expected",
    [
        ("Paris, France", "paris", 1.0),  # the prediction runs past the answer
        ("Par", "Paris", 0.0),  # a cut-off prediction is not a match
        ("The Paris", "paris", 1.0),  # articles and case do not count
        ("  paris!", "Paris.", 1.0),
        ("London", "Paris", 0.0),
        ("", "Paris", 0.0),
        ("France, Paris", "Paris", 0.0),  # the answer must come first
        ("Parisian", "Paris", 1.0),  # the prefix rule compares characters, not words
    ],
)
def test_exact_match_prefix_rule(prediction, answer, expected):
    assert exact_match(prediction, answer) == expected


def test_f1_zero_overlap():
    assert f1_score("London England", "Paris France") == 0.0
    assert f1_score("", "Paris") == 0.0


def test_f1_identical_after_normalisation():
    assert f1_score("The Beatles!", "beatles") == 1.0
    assert f1_score("the", "a") == 1.0  # both normalise to nothing


def test_f1_partial_overlap_by_hand():
    # "big red barn" vs "red barn door": 2 shared of 3 and 3 tokens -> P = R = 2/3
    assert f1_score("the big red barn", "a red barn door") == pytest.approx(2 / 3)
    # "red red barn" vs "red barn house stable": shared counts are clipped (red once, barn once)
    # P = 2/3, R = 2/4 -> F1 = 2 * (2/3 * 1/2) / (2/3 + 1/2) = 4/7
    assert f1_score("red red barn", "red barn house stable") == pytest.approx(4 / 7)
    # a long prediction holding the answer: P = 1/5, R = 1 -> F1 = 1/3
    assert f1_score("Paris is the capital of France", "Paris") == pytest.approx(2 * (1 / 5) * 1 / (1 / 5 + 1))
