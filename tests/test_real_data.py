"""The README's real-data sequence, end to end, for each real dataset's own file format:

    train_qa.py  ->  run.py task=train model=CaMeLS  ->  run.py -m task=eval model=uniform,ssm,TFIDF,CaMeLS
    lr=a,b  ->  report.py

on small fixture files written here (a StreamingQA CSV folder, SQuAD JSON in the Hugging Face
schema, ArchivalQA's processed CSVs) and a randomly initialised GPT-2 with its own tokenizer saved
as a Hugging Face folder, so every model goes through the `from_pretrained` paths a user's
`distilgpt2` takes. The model has 64 positions and the documents are longer: the length cut runs too.
"""
import json

import pandas as pd
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from conftest import ONE_THREAD_ENV, run_script
SPLIT_SIZES = {"qa_train": 8, "qa_val": 4, "train": 4, "val": 4, "test": 4}  # documents per split
NAMES = ["Anna Berg", "Carl Dorn", "Eva Falk", "Gus Hale", "Ida Kern", "Jon Lund", "Kai Moss", "Lea Nord"]
TOWNS = ["Oslo", "Paris", "Rome", "Bern", "Riga", "Kyiv", "Lima", "Baku"]


def documents():
    """(text, question, answers) of 24 news-like paragraphs, each over 64 tokens, each with two
    questions; answers carry alternatives separated by a backslash."""
    out = []
    for i in range(sum(SPLIT_SIZES.values())):
        name, town, year = NAMES[i % 8], TOWNS[(i * 3) % 8], 1990 + i
        text = (f"In {year} {name} opened a bakery in {town}. The bakery sold bread and cakes to the people of "
                f"{town}, and {name} worked there every morning for many years. Later {name} wrote a book about "
                f"bread, which was read in many towns. The book won a prize in {year + 2}.")
        out.append((text, [(f"Where did {name} open a bakery in {year}?", f"{town}\\the town of {town}"),
                           (f"When did the book by {name} win a prize?", f"{year + 2}")]))
    return out


def split_documents():
    docs, start = documents(), 0
    for split, n in SPLIT_SIZES.items():
        yield split, docs[start:start + n]
        start += n


def write_streamingqa(root):
    for split, docs in split_documents():
        rows = [dict(text=t, question=q, answers=a) for t, qas in docs for q, a in qas]
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return [f"dataset.data_dir={root}"]


def write_archivalqa(root):
    for split, docs in split_documents():
        rows = [dict(question=q, answer=a.split("\\")[0], doc_id=f"{split}{i}", para_num=0, ans_paragraph=t,
                     ans_text=t) for i, (t, qas) in enumerate(docs) for q, a in qas]
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return [f"dataset.data_dir={root}"]


def write_squad(root):
    """HF SQuAD records as JSON lines: the train file holds qa_train, qa_val, train and val in index
    ranges; the validation file is the test stream."""
    train, ranges, start = [], {}, 0
    for split, docs in split_documents():
        records = [dict(id=f"{split}{i}", title=f"title {t[:12]}", context=t, question=q,
                        answers=dict(text=a.split("\\"), answer_start=[t.find(a.split("\\")[0])] * len(a.split("\\"))))
                   for i, (t, qas) in enumerate(docs) for q, a in qas]
        if split == "test":
            (root / "validation.json").write_text("\n".join(json.dumps(r) for r in records))
            continue
        ranges[split] = [start, start + len(records)]
        start += len(records)
        train += records
    (root / "train.json").write_text("\n".join(json.dumps(r) for r in train))
    return [f"dataset.local_files.train={root / 'train.json'}", f"dataset.local_files.validation={root / 'validation.json'}",
            *(f"dataset.ranges.{split}=[{a},{b}]" for split, (a, b) in ranges.items())]


WRITERS = {"streamingqa": write_streamingqa, "squad": write_squad, "archivalqa": write_archivalqa}


def write_model(root):
    """A random 2-layer GPT-2 with 64 positions and a byte-level BPE tokenizer trained on the
    fixture text, saved as one Hugging Face folder."""
    texts = [t for t, _ in documents()] + [q + " " + a for _, qas in documents() for q, a in qas]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts * 2, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=64)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def python(*args, cwd):
    result = run_script(*args, cwd=cwd, timeout=900, env=ONE_THREAD_ENV)
    assert result.returncode == 0, f"{' '.join(args[:3])} failed:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["streamingqa", "squad", "archivalqa"])
def test_readme_real_data_sequence(dataset, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    data_options = WRITERS[dataset](data)
    model = write_model(tmp_path / "gpt2-random")
    web_text = tmp_path / "openwebtext.csv"
    pd.DataFrame(dict(raw_text=[t for t, _ in documents()][:6])).to_csv(web_text, index=False)
    common = [f"dataset={dataset}", *data_options, "device=cpu"]

    # 1. QA pre-tuning
    qa_dir = tmp_path / "qa"
    python("train_qa.py", *common, f"model={model}", "batch_size=4", "grad_acc_steps=1", "max_steps=2",
           "val_steps=1", "eval_batch_size=8", f"hydra.run.dir={qa_dir}", cwd=tmp_path)
    state_dict = qa_dir / "checkpoints" / "lowest_nll" / "state_dict.pt"
    assert state_dict.is_file()
    base = [f"base_model={model}", f"base_model_state_dict={state_dict}", "progress=false"]

    # 2. CaMeLS meta-training, two outer steps (a body other than distilgpt2 is named, as a user would)
    train_dir = tmp_path / "meta"
    python("run.py", "task=train", "model=CaMeLS", *common, *base, f"model.pretrained_model={model}",
           f"web_text_csv={web_text}", "update_batch_size=2", "grad_acc_steps=1", "reset_base_freq=4",
           "max_outer_steps=2", "val_batches=1", f"hydra.run.dir={train_dir}", cwd=tmp_path)
    checkpoint = train_dir / "checkpoints" / "best"
    assert checkpoint.is_dir()
    steps = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps if row["split"] == "train"] == [1, 2]

    # 3. every method over two learning rates on the validation stream, in one sweep
    sweep = tmp_path / "sweep"
    python("run.py", "-m", "task=eval", *common, *base, "split=val", "model=uniform,ssm,TFIDF,CaMeLS",
           f"weight_model_path={checkpoint}", "lr=1e-4,1e-3", "eval=[em,em2,ppl]", "eval_batch_size=8",
           f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    summaries = [json.loads(p.read_text()) for p in sweep.rglob("summary.json")]
    assert sorted((s["method"], s["lr"]) for s in summaries) == sorted(
        (m, lr) for m in ("uniform", "ssm", "TFIDF", "CaMeLS") for lr in (1e-4, 1e-3))
    for summary in summaries:
        assert summary["n_documents"] == SPLIT_SIZES["val"] and summary["n_questions"] == 2 * SPLIT_SIZES["val"]
        assert summary["decoding"] == "beam" and summary["top_k"] == 2 and summary["nll"] > 0
        assert 0 <= summary["em"] <= summary["em_at_k"] <= 1

    # 4. the table
    python("report.py", str(sweep), cwd=tmp_path)
    table = pd.read_csv(sweep / "report" / "results.csv")
    assert set(table["method"]) == {"uniform", "ssm", "TFIDF", "CaMeLS"} and len(table) == 8
