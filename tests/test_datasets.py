"""Every loader on small files in the real schemas, the stream builder, the collator and the
one-line errors of bad input."""

import json
import random

import huggingface_hub
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import GPT2TokenizerFast
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

from exp_datasets import Example, QACollator, group_shuffle, load_split, load_web_text, make_stream
from plumbing.environment import REPO_ROOT
from plumbing.errors import UsageError


def dataset_cfg(name, **overrides):
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "dataset" / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


# ---------------------------------------------------------------------------------------------
# StreamingQA


def write_streamingqa(folder, rows=None):
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows or [
        ("Paris is the capital of France.", "What is the capital of France?", "Paris\\the city of Paris\\ Lutetia"),
        ("Paris is the capital of France.", "Which country has Paris?", "France"),
        ("The Nile flows north.", "Which way does the Nile flow?", "north\\northwards"),
    ]
    for split in ("qa_train", "qa_val", "train", "val", "test"):
        pd.DataFrame(rows, columns=["text", "question", "answers"]).to_csv(folder / f"{split}.csv", index=False)
    return folder


def test_streamingqa_keeps_the_shortest_answer_and_one_doc_id_per_text(tmp_path):
    cfg = dataset_cfg("streamingqa", data_dir=str(write_streamingqa(tmp_path / "sqa")))
    examples = load_split(cfg, "test")
    assert [e.answer for e in examples] == ["Paris", "France", "north"]  # not capitalised by this config
    assert [e.question for e in examples][1] == "Which country has Paris?"
    assert examples[0].doc_id == examples[1].doc_id != examples[2].doc_id
    assert examples[0].text == "Paris is the capital of France."


def test_streamingqa_path_overrides_the_split_file(tmp_path):
    cfg = dataset_cfg("streamingqa", data_dir=str(write_streamingqa(tmp_path / "sqa")))
    other = tmp_path / "other.csv"
    pd.DataFrame([("Rome is old.", "What is old?", "Rome")], columns=["text", "question", "answers"]).to_csv(other)
    assert [e.answer for e in load_split(cfg, "test", path=other)] == ["Rome"]


# ---------------------------------------------------------------------------------------------
# SQuAD (HF schema JSON lines through dataset.local_files or `path`)

TITLES = ["Alps", "Bees", "Cats", "Dune", "Elms", "Figs"]


def squad_records(prefix):
    """Two records per title, titles in order; answers with lower-case starts and alternatives."""
    records = []
    for i in range(12):
        title = TITLES[i // 2]
        records.append(
            {
                "id": f"{prefix}{i}",
                "title": title,
                "context": f"{title} context {i // 2}.",
                "question": f"{prefix} question {i}?",
                "answers": {
                    "text": [f"the {title.lower()} answer {i}", f"{title.lower()} {i}"],
                    "answer_start": [0, 4],
                },
            }
        )
    return records


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.fixture(scope="module")
def squad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("squad")
    return {
        "train": str(write_jsonl(folder / "train.json", squad_records("t"))),
        "validation": str(write_jsonl(folder / "validation.json", squad_records("v")[:5])),
    }


def squad_cfg(squad_files, ranges=None, **overrides):
    ranges = {"qa_train": [0, 4], "qa_val": [4, 6], "train": [6, 9], "val": [9, 12], **(ranges or {})}
    return dataset_cfg("squad", local_files=squad_files, ranges=ranges, **overrides)


def assert_title_groups_intact(examples, number_of):
    """Each title's examples are contiguous and in their file order."""
    seen = []
    for example in examples:
        if not seen or seen[-1] != example.group:
            assert example.group not in seen, "a title group was split"
            seen.append(example.group)
    for title in seen:
        numbers = [number_of(e) for e in examples if e.group == title]
        assert numbers == sorted(numbers)
    return seen


def question_number(example):
    return int(example.question.split()[2].rstrip("?"))


@pytest.mark.parametrize(
    "split, indices",
    [("qa_train", range(0, 4)), ("qa_val", range(4, 6)), ("train", range(6, 9)), ("val", range(9, 12))],
)
def test_squad_index_ranges_of_the_train_split(squad_files, split, indices):
    examples = load_split(squad_cfg(squad_files), split)
    assert sorted(question_number(e) for e in examples) == list(indices)
    assert all(e.question.startswith("t ") for e in examples)
    assert_title_groups_intact(examples, question_number)


def test_squad_test_split_is_validation_with_shortest_capitalised_answers(squad_files):
    examples = load_split(squad_cfg(squad_files), "test")
    assert sorted(question_number(e) for e in examples) == [0, 1, 2, 3, 4]
    assert all(e.question.startswith("v ") for e in examples)
    by_number = {question_number(e): e for e in examples}
    # shortest of "the alps answer 0" / "alps 0", first letter capitalised
    assert by_number[0].answer == "Alps 0"
    assert by_number[4].answer == "Cats 4"
    assert by_number[0].text == "Alps context 0." and by_number[0].group == "Alps"
    assert by_number[0].doc_id == by_number[1].doc_id != by_number[2].doc_id
    uncapitalised = load_split(squad_cfg(squad_files, capitalize_answers=False), "test")
    assert sorted(e.answer for e in uncapitalised)[0] == "alps 0"


def test_squad_title_groups_are_shuffled_as_wholes(squad_files):
    orders = set()
    for seed in range(6):
        examples = load_split(squad_cfg(squad_files, ranges={"train": [0, 12]}, shuffle_seed=seed), "train")
        assert sorted(question_number(e) for e in examples) == list(range(12))
        orders.add(tuple(assert_title_groups_intact(examples, question_number)))
    assert len(orders) > 1  # the seed moves whole groups around
    same = [e.question for e in load_split(squad_cfg(squad_files, shuffle_seed=3), "qa_train")]
    assert same == [e.question for e in load_split(squad_cfg(squad_files, shuffle_seed=3), "qa_train")]


def test_squad_path_reads_one_file_whole(squad_files):
    examples = load_split(squad_cfg(squad_files), "val", path=squad_files["validation"])
    assert sorted(question_number(e) for e in examples) == [0, 1, 2, 3, 4]


def test_squad_offline_without_local_files_is_a_usage_error(tmp_path, monkeypatch):
    import datasets

    # as under the Makefile's HF_DATASETS_OFFLINE=1, with an empty cache
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    with pytest.raises(UsageError, match="cannot load 'squad'.*set dataset.local_files"):
        load_split(dataset_cfg("squad"), "train")


def test_squad_bad_local_files_are_usage_errors(squad_files, tmp_path):
    with pytest.raises(UsageError, match="dataset.local_files.validation is missing"):
        load_split(dataset_cfg("squad", local_files={"train": squad_files["train"]}), "test")
    with pytest.raises(UsageError, match="SQuAD file .*nope.json does not exist"):
        load_split(dataset_cfg("squad"), "test", path=tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UsageError, match="broken.json is not readable JSON"):
        load_split(dataset_cfg("squad"), "test", path=broken)
    # SQuAD's own nested layout is not the HF schema
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"version": "1.1", "data": [{"title": "A", "paragraphs": []}]}))
    with pytest.raises(UsageError, match="no 'title' field"):
        load_split(dataset_cfg("squad"), "test", path=nested)


# ---------------------------------------------------------------------------------------------
# ArchivalQA and web text


def write_archivalqa(folder):
    folder.mkdir(parents=True)
    rows = [
        ("7", "0", "Who spoke?", "mayor Koch\\Koch", "Koch spoke.", "Koch spoke.\nHe left."),
        ("7", "1", "Who left?", "he", "He left.", "Koch spoke.\nHe left."),
        ("9", "0", "What fell?", "Rain", "Rain fell.", "Rain fell."),
    ]
    columns = ["doc_id", "para_num", "question", "answer", "ans_paragraph", "ans_text"]
    for split in ("qa_train", "qa_val", "train", "val", "test"):
        pd.DataFrame(rows, columns=columns).to_csv(folder / f"{split}.csv", index=False)
    return folder


@pytest.mark.parametrize("full_passage", [False, True])
def test_archivalqa_columns(tmp_path, full_passage):
    cfg = dataset_cfg("archivalqa", data_dir=str(write_archivalqa(tmp_path / "aqa")), full_passage=full_passage)
    examples = {e.question: e for e in load_split(cfg, "val")}
    assert examples["Who left?"].text == ("Koch spoke.\nHe left." if full_passage else "He left.")
    assert examples["Who spoke?"].answer == "Koch"
    assert examples["Who left?"].answer == "He"  # capitalised by the archivalqa config
    assert examples["What fell?"].doc_id == examples["What fell?"].group == "9"
    ordered = [e.question for e in load_split(cfg, "val")]
    assert ordered.index("Who spoke?") + 1 == ordered.index("Who left?")  # article kept together, in order


def test_web_text_reads_raw_text(tmp_path):
    csv = tmp_path / "web.csv"
    pd.DataFrame({"raw_text": ["First page.", "  ", "Second page.", "Third page."], "url": list("abcd")}).to_csv(csv)
    assert load_web_text(csv) == ["First page.", "Second page.", "Third page."]
    assert load_web_text(csv, limit=2) == ["First page.", "Second page."]


# ---------------------------------------------------------------------------------------------
# Bad input: one UsageError that names the problem


def test_missing_data_folder_and_file(tmp_path):
    with pytest.raises(UsageError, match="data_dir .*absent of dataset=streamingqa does not exist"):
        load_split(dataset_cfg("streamingqa", data_dir=str(tmp_path / "absent")), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"StreamingQA file .*empty/train\.csv does not exist"):
        load_split(dataset_cfg("streamingqa", data_dir=str(tmp_path / "empty")), "train")
    with pytest.raises(UsageError, match="has no data_dir"):
        load_split(dataset_cfg("streamingqa", data_dir=None), "train")


def test_csv_without_required_column_names_it(tmp_path):
    folder = tmp_path / "sqa"
    folder.mkdir()
    pd.DataFrame({"text": ["T."], "question": ["Q?"], "answer": ["A"]}).to_csv(folder / "val.csv", index=False)
    with pytest.raises(UsageError, match=r"val\.csv has no column 'answers'"):
        load_split(dataset_cfg("streamingqa", data_dir=str(folder)), "val")
    aqa = write_archivalqa(tmp_path / "aqa")
    pd.read_csv(aqa / "test.csv").drop(columns="ans_text").to_csv(aqa / "test.csv", index=False)
    with pytest.raises(UsageError, match=r"test\.csv has no column 'ans_text'"):
        load_split(dataset_cfg("archivalqa", data_dir=str(aqa), full_passage=True), "test")
    web = tmp_path / "web.csv"
    pd.DataFrame({"text": ["x"]}).to_csv(web, index=False)
    with pytest.raises(UsageError, match=r"web\.csv has no column 'raw_text'"):
        load_web_text(web)
    with pytest.raises(UsageError, match="web_text_csv is not set"):
        load_web_text(None)


def test_empty_document_or_answer_names_the_row(tmp_path):
    rows = [("A text.", "Q1?", "a"), ("", "Q2?", "b")]
    cfg = dataset_cfg("streamingqa", data_dir=str(write_streamingqa(tmp_path / "a", rows)))
    # the header is line 1, so the second row is line 3 of the file
    with pytest.raises(UsageError, match="dataset=streamingqa split=train: .*train.csv line 3 has an empty document"):
        load_split(cfg, "train")
    cfg = dataset_cfg("streamingqa", data_dir=str(write_streamingqa(tmp_path / "b", [("A text.", "Q1?", "\\ ")])))
    with pytest.raises(UsageError, match="train.csv line 2 has an empty question or answer"):
        load_split(cfg, "train")


def test_unknown_dataset_name():
    with pytest.raises(UsageError, match="dataset=wikiqa is unknown; choose one of .*squad"):
        load_split(OmegaConf.create({"name": "wikiqa"}), "train")


# ---------------------------------------------------------------------------------------------
# Streams


def stream_examples():
    """20 documents (two groups of ten) with 1-3 questions each; one text repeated under two
    doc ids to check passage de-duplication."""
    examples = []
    for d in range(20):
        for q in range(1 + d % 3):
            examples.append(
                Example(text=f"doc {d}", question=f"q{d}.{q}", answer="a", doc_id=str(d), group=f"g{d // 10}")
            )
    examples.append(Example(text="doc 4", question="q4.dup", answer="a", doc_id="dup", group="g0"))
    return examples


def test_make_stream_deduplicates_passages():
    examples = stream_examples()
    stream = make_stream(examples, -1, seed=0)
    assert sorted(d.text for d in stream) == sorted(f"doc {d}" for d in range(20))
    by_text = {d.text: [e.question for e in d.examples] for d in stream}
    assert by_text["doc 4"] == ["q4.0", "q4.1", "q4.dup"]
    assert sum(len(d.examples) for d in stream) == len(examples)


def test_downsample_is_deterministic_per_seed_and_keeps_all_questions():
    examples = stream_examples()
    picks = {}
    for seed in (0, 1, 2):
        stream = make_stream(examples, 5, seed)
        again = make_stream(examples, 5, seed)
        assert [d.text for d in stream] == [d.text for d in again]
        assert len(stream) == 5
        for document in stream:
            expected = [e.question for e in examples if e.text == document.text]
            assert [e.question for e in document.examples] == expected
        picks[seed] = frozenset(d.text for d in stream)
    assert len(set(picks.values())) > 1
    with pytest.raises(UsageError, match="downsample_to=21 but the stream has only 20 documents"):
        make_stream(examples, 21, 0)


def test_group_shuffle_keeps_order_inside_groups():
    items = [("b", 1), ("a", 1), ("b", 2), ("c", 1), ("a", 2), ("b", 3)]
    shuffled = group_shuffle(items, lambda item: item[0], random.Random(5))
    assert sorted(shuffled) == sorted(items)
    for group in "abc":
        assert [n for g, n in shuffled if g == group] == sorted(n for g, n in items if g == group)
    starts = [i for i, item in enumerate(shuffled) if i == 0 or shuffled[i - 1][0] != item[0]]
    assert len(starts) == 3  # each group contiguous


# ---------------------------------------------------------------------------------------------
# Collator (a byte-level GPT-2 tokenizer: one token per byte, so lengths are known exactly)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("byte_tokenizer")
    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = GPT2TokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    tok.pad_token = tok.eos_token
    return tok


def examples_for(questions, answers, texts):
    return [
        Example(text=t, question=q, answer=a, doc_id=str(i))
        for i, (q, a, t) in enumerate(zip(questions, answers, texts))
    ]


def test_collator_targets_only_the_answer(tokenizer):
    questions, answers = ["Who wrote Hamlet?", "Where?"], ["Shakespeare", "Stratford-upon-Avon"]
    batch = QACollator(tokenizer, 64, 32, 32)(examples_for(questions, answers, ["x", "y"]))
    for row, (question, answer) in enumerate(zip(questions, answers)):
        labels, ids, mask = batch["qa_labels"][row], batch["qa_ids"][row], batch["qa_mask"][row]
        on_answer = labels != -100
        assert tokenizer.decode(labels[on_answer]) == " " + answer
        assert torch.equal(ids[on_answer], labels[on_answer])
        assert tokenizer.decode(ids[mask.bool()]) == question + " " + answer
        assert not on_answer[: len(question)].any()
    # dynamic padding: the longest QA pair sets the width, shorter rows are right-padded
    longest, second = len("Who wrote Hamlet? Shakespeare"), len("Where? Stratford-upon-Avon")
    assert batch["qa_ids"].shape[1] == longest
    assert batch["qa_mask"][1].tolist() == [1] * second + [0] * (longest - second)
    assert (batch["qa_labels"][1, second:] == -100).all()
    assert batch["answers"] == answers and batch["questions"] == questions


def test_collator_eos_after_the_answer(tokenizer):
    batch = QACollator(tokenizer, 64, 32, 32, qa_eos=True)(examples_for(["Q?"], ["Yes"], ["t"]))
    labels = batch["qa_labels"][0]
    answer_labels = labels[labels != -100].tolist()
    assert answer_labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer_labels[:-1]) == " Yes"


def test_collator_prompts_are_left_padded_questions(tokenizer):
    questions = ["Who?", "What happened in 1990?"]
    batch = QACollator(tokenizer, 64, 32, 8)(examples_for(questions, ["A", "B"], ["x", "y"]))
    width = len("What happened in 1990?")
    assert batch["gen_ids"].shape == (2, width)
    assert batch["gen_mask"][0].tolist() == [0] * (width - 4) + [1] * 4
    assert tokenizer.decode(batch["gen_ids"][0, -4:]) == "Who?"
    assert (batch["gen_ids"][0, : width - 4] == tokenizer.pad_token_id).all()
    assert tokenizer.decode(batch["gen_ids"][1]) == "What happened in 1990?"


def test_collator_texts_padded_to_the_longest_and_truncated(tokenizer):
    texts = ["short", "a much longer document", "x" * 50]
    collator = QACollator(tokenizer, max_text_len=12, max_question_len=32, max_answer_len=8)
    batch = collator(examples_for(["q", "q", "q"], ["a", "a", "a"], texts))
    assert batch["text_ids"].shape == (3, 12)
    assert tokenizer.decode(batch["text_ids"][1]) == "a much longe"
    assert batch["text_mask"].sum(1).tolist() == [5, 12, 12]
    small = collator(examples_for(["q", "q"], ["a", "a"], ["short", "tiny"]))
    assert small["text_ids"].shape == (2, 5)  # padded to the batch's longest, not to max_text_len
    assert small["text_mask"][1].tolist() == [1, 1, 1, 1, 0]


def test_collator_truncates_long_questions_and_answers_from_the_end(tokenizer):
    collator = QACollator(tokenizer, max_text_len=64, max_question_len=10, max_answer_len=5)
    question, answer = "What is the name of the river?", "the Mississippi River"
    batch = collator(examples_for([question], [answer], ["t"]))
    labels = batch["qa_labels"][0]
    assert tokenizer.decode(labels[labels != -100]) == " the "
    assert tokenizer.decode(batch["qa_ids"][0, :10]) == "What is th"
    assert batch["qa_ids"].shape[1] == 15
    assert tokenizer.decode(batch["gen_ids"][0]) == "What is th"


def test_collator_from_config(tokenizer):
    cfg = dataset_cfg("archivalqa", max_text_len=7, max_question_len=3, max_answer_len=2, qa_eos=True)
    collator = QACollator.from_config(tokenizer, cfg)
    assert (collator.max_text_len, collator.max_question_len, collator.max_answer_len, collator.qa_eos) == (
        7,
        3,
        2,
        True,
    )
