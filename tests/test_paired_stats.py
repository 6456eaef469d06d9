"""Paired bootstrap comparison: intervals known by hand, the normal approximation, coverage over
simulated data sets, and report.py's paired table on a tree of runs with per-question scores."""

import json

import numpy as np
import pandas as pd
import pytest

import paired_stats
import report
from plumbing.errors import UsageError


def test_constant_differences_give_a_point_interval():
    differences = [np.full(30, 0.25), np.full(50, 0.25)]
    result = paired_stats.compare(differences, n_resamples=500)
    assert result["difference"] == pytest.approx(0.25)
    for key in ("ci_questions_low", "ci_questions_high", "ci_streams_low", "ci_streams_high"):
        assert result[key] == pytest.approx(0.25)
    assert result["n_streams"] == 2 and result["n_questions"] == 80


def test_two_constant_streams_interval_is_known():
    """Stream A always differs by 0.1, stream B by 0.5. Resampling questions changes nothing
    (interval = their mean 0.3); resampling the two streams gives 0.1, 0.3, 0.5 with
    probabilities 1/4, 1/2, 1/4, whose 2.5% and 97.5% percentiles are 0.1 and 0.5."""
    differences = [np.full(20, 0.1), np.full(40, 0.5)]
    result = paired_stats.compare(differences, n_resamples=4000, seed=3)
    assert result["difference"] == pytest.approx(0.3)
    assert (result["ci_questions_low"], result["ci_questions_high"]) == pytest.approx((0.3, 0.3))
    assert (result["ci_streams_low"], result["ci_streams_high"]) == pytest.approx((0.1, 0.5))
    replicates = paired_stats.bootstrap_replicates(differences, 4000, seed=3)
    shares = [np.mean(np.isclose(replicates, v)) for v in (0.1, 0.3, 0.5)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)


def test_question_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    sample = rng.normal(0.05, 0.4, size=4000)
    low, high = paired_stats.interval(paired_stats.bootstrap_replicates([sample], 4000, over_streams=False))
    half_width = 1.96 * sample.std(ddof=1) / np.sqrt(len(sample))
    assert (low + high) / 2 == pytest.approx(sample.mean(), abs=0.15 * half_width)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)


def test_question_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Per-question differences in {-1, 0, 1} (as EM differences are) with mean 0.1: the
    interval over the questions of three fixed streams covers 0.1 in about 95% of data sets."""
    rng = np.random.default_rng(1)
    values, probabilities = np.array([-1.0, 0.0, 1.0]), np.array([0.15, 0.6, 0.25])
    covered = 0
    repeats = 300
    for repeat in range(repeats):
        differences = [rng.choice(values, size=80, p=probabilities) for _ in range(3)]
        low, high = paired_stats.interval(
            paired_stats.bootstrap_replicates(differences, 1000, seed=repeat, over_streams=False)
        )
        covered += low <= 0.1 <= high
    assert 0.90 <= covered / repeats <= 0.99


def write_run(root, method, lr, seed, f1s, questions=None):
    folder = root / f"{method}-lr{lr}-seed{seed}"
    folder.mkdir(parents=True)
    questions = questions or [f"q{i} of stream {seed}" for i in range(len(f1s))]
    rows = [dict(question=q, answer="a", em=float(f == 1), f1=f) for q, f in zip(questions, f1s)]
    rows.append(dict(question="<summary>", answer="mean F1", em=None, f1=float(np.mean(f1s))))
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    summary = {
        "method": method,
        "lr": lr,
        "seed": seed,
        "dataset": "tiny_world",
        "split": "test",
        "base_model": "base",
        "downsample_to": 4,
        "optimizer": "adam",
        "n_epochs": 1,
        "em": float(np.mean([f == 1 for f in f1s])),
        "f1": float(np.mean(f1s)),
    }
    (folder / "summary.json").write_text(json.dumps(summary))


SCORES = {  # method -> seed -> per-question F1 at the method's only lr
    "uniform": {1: [0.0, 0.5, 1.0, 0.0], 2: [0.0, 0.0, 0.5, 0.0]},
    "ssm": {1: [0.0, 0.0, 0.0, 0.0], 2: [0.0, 0.0, 0.0, 0.5]},
    "CaMeLS": {1: [1.0, 0.5, 1.0, 0.5], 2: [0.5, 0.0, 1.0, 1.0]},
}


def test_report_compares_every_method_with_the_best_baseline(tmp_path):
    for method, seeds in SCORES.items():
        for seed, f1s in seeds.items():
            write_run(tmp_path / "runs", method, 1e-3, seed, f1s)
    report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--bootstrap", "2000"])
    paired = pd.read_csv(tmp_path / "report" / "paired.csv").set_index("method")
    # uniform (mean F1 0.25) beats ssm (0.0625): the best baseline
    assert set(paired.index) == {"ssm", "CaMeLS"} and set(paired["baseline"]) == {"uniform"}
    expected = np.mean([np.mean(np.subtract(SCORES["CaMeLS"][s], SCORES["uniform"][s])) for s in (1, 2)])
    assert paired.loc["CaMeLS", "difference"] == pytest.approx(expected)
    direct = paired_stats.compare(
        [np.subtract(SCORES["CaMeLS"][s], SCORES["uniform"][s]) for s in (1, 2)], n_resamples=2000
    )
    for key in ("ci_questions_low", "ci_questions_high", "ci_streams_low", "ci_streams_high"):
        assert paired.loc["CaMeLS", key] == pytest.approx(direct[key])
    assert paired.loc["CaMeLS", "n_streams"] == 2 and paired.loc["CaMeLS", "n_questions"] == 8
    text = (tmp_path / "report" / "results.md").read_text()
    assert "Paired comparison with the best baseline (uniform)" in text
    assert f"| CaMeLS | {100 * expected:+.1f} |" in text


def test_streams_whose_questions_differ_are_refused(tmp_path):
    write_run(tmp_path / "runs", "uniform", 1e-3, 1, [0.0, 1.0])
    write_run(tmp_path / "runs", "CaMeLS", 1e-3, 1, [1.0, 1.0], questions=["other", "questions"])
    with pytest.raises(UsageError, match="not the same questions"):
        report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    with pytest.raises(UsageError, match="at least 100"):
        report.main([str(tmp_path / "runs"), "--bootstrap", "10"])


# ---------------------------------------------------------------------------------------------
# Pooled over worlds: hierarchical bootstrap


def test_one_world_pools_to_its_own_interval_over_streams_and_questions():
    rng = np.random.default_rng(5)
    streams = [rng.normal(0.1, 0.3, size=n) for n in (20, 35, 50)]
    assert np.array_equal(
        paired_stats.hierarchical_replicates([streams], 2000, seed=4),
        paired_stats.bootstrap_replicates(streams, 2000, seed=4, over_streams=True),
    )
    pooled, single = paired_stats.pooled_compare([streams], 2000, seed=4), paired_stats.compare(streams, 2000, seed=4)
    assert pooled["difference"] == single["difference"] == pooled["world_min"] == pooled["world_max"]
    assert (pooled["ci_low"], pooled["ci_high"]) == (single["ci_streams_low"], single["ci_streams_high"])
    assert np.isnan(pooled["world_sd"]) and pooled["n_worlds"] == 1 and pooled["n_questions"] == 105


def test_two_constant_worlds_interval_and_spread_are_known():
    """World A differs by 0.1 on each of its streams, world B by 0.5: streams and questions change
    nothing inside a world, and drawing the two worlds gives 0.1, 0.3, 0.5 with probabilities 1/4,
    1/2, 1/4 (percentiles 2.5% and 97.5%: 0.1 and 0.5)."""
    worlds = [[np.full(10, 0.1), np.full(30, 0.1)], [np.full(20, 0.5)]]
    replicates = paired_stats.hierarchical_replicates(worlds, 4000, seed=1)
    shares = [np.mean(np.isclose(replicates, v)) for v in (0.1, 0.3, 0.5)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    result = paired_stats.pooled_compare(worlds, 4000, seed=1)
    assert result["difference"] == pytest.approx(0.3)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((0.1, 0.5))
    assert result["world_sd"] == pytest.approx(np.std([0.1, 0.5], ddof=1))
    assert (result["world_min"], result["world_max"]) == pytest.approx((0.1, 0.5))
    assert result["n_worlds"] == 2 and result["n_streams"] == 3 and result["n_questions"] == 60


def test_pooled_interval_covers_the_true_mean_about_95_percent_of_the_time():
    """Worlds whose effect scatters around a true mean 0.05 (sd 0.04), streams around their world's
    (sd 0.03), questions around their stream's (sd 0.3): the hierarchical interval covers 0.05 in
    about 95% of simulated data sets."""
    rng = np.random.default_rng(2)
    true_mean, covered, repeats = 0.05, 0, 200
    for repeat in range(repeats):
        world_effects = rng.normal(true_mean, 0.04, size=15)
        worlds = [
            [rng.normal(rng.normal(effect, 0.03), 0.3, size=rng.integers(30, 60)) for _ in range(3)]
            for effect in world_effects
        ]
        result = paired_stats.pooled_compare(worlds, 1000, seed=repeat)
        covered += result["ci_low"] <= true_mean <= result["ci_high"]
    assert 0.90 <= covered / repeats <= 0.99
