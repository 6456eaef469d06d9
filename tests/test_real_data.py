"""The README's real-data sequence, end to end, for each real dataset's own file format:

    train_qa.py  ->  run.py task=train model=CaMeLS  ->  run.py -m task=eval model=uniform,ssm,TFIDF,CaMeLS
    lr=a,b  ->  report.py

on small fixture files written here (a StreamingQA CSV folder, SQuAD JSON in the Hugging Face
schema, ArchivalQA's processed CSVs) and a randomly initialised GPT-2 with its own tokenizer saved
as a Hugging Face folder, so every model goes through the `from_pretrained` paths a user's
`distilgpt2` takes. The model has 64 positions and the documents are longer: the length cut runs too.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ONE_THREAD_ENV, REPO, run_script
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

SPLIT_SIZES = {"qa_train": 8, "qa_val": 4, "train": 4, "val": 4, "test": 4}  # documents per split
NAMES = ["Anna Berg", "Carl Dorn", "Eva Falk", "Gus Hale", "Ida Kern", "Jon Lund", "Kai Moss", "Lea Nord"]
TOWNS = ["Oslo", "Paris", "Rome", "Bern", "Riga", "Kyiv", "Lima", "Baku"]


def documents():
    """(text, question, answers) of 24 news-like paragraphs, each over 64 tokens, each with two
    questions; answers carry alternatives separated by a backslash."""
    out = []
    for i in range(sum(SPLIT_SIZES.values())):
        name, town, year = NAMES[i % 8], TOWNS[(i * 3) % 8], 1990 + i
        text = (
            f"In {year} {name} opened a bakery in {town}. The bakery sold bread and cakes to the people of "
            f"{town}, and {name} worked there every morning for many years. Later {name} wrote a book about "
            f"bread, which was read in many towns. The book won a prize in {year + 2}."
        )
        out.append(
            (
                text,
                [
                    (f"Where did {name} open a bakery in {year}?", f"{town}\\the town of {town}"),
                    (f"When did the book by {name} win a prize?", f"{year + 2}"),
                ],
            )
        )
    return out


def split_documents():
    docs, start = documents(), 0
    for split, n in SPLIT_SIZES.items():
        yield split, docs[start : start + n]
        start += n


def write_streamingqa(root):
    for split, docs in split_documents():
        rows = [dict(text=t, question=q, answers=a) for t, qas in docs for q, a in qas]
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return [f"dataset.data_dir={root}"]


def write_archivalqa(root):
    for split, docs in split_documents():
        rows = [
            dict(question=q, answer=a.split("\\")[0], doc_id=f"{split}{i}", para_num=0, ans_paragraph=t, ans_text=t)
            for i, (t, qas) in enumerate(docs)
            for q, a in qas
        ]
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return [f"dataset.data_dir={root}"]


def write_squad(root):
    """HF SQuAD records as JSON lines: the train file holds qa_train, qa_val, train and val in index
    ranges; the validation file is the test stream."""
    train, ranges, start = [], {}, 0
    for split, docs in split_documents():
        records = [
            dict(
                id=f"{split}{i}",
                title=f"title {t[:12]}",
                context=t,
                question=q,
                answers=dict(text=a.split("\\"), answer_start=[t.find(a.split("\\")[0])] * len(a.split("\\"))),
            )
            for i, (t, qas) in enumerate(docs)
            for q, a in qas
        ]
        if split == "test":
            (root / "validation.json").write_text("\n".join(json.dumps(r) for r in records))
            continue
        ranges[split] = [start, start + len(records)]
        start += len(records)
        train += records
    (root / "train.json").write_text("\n".join(json.dumps(r) for r in train))
    return [
        f"dataset.local_files.train={root / 'train.json'}",
        f"dataset.local_files.validation={root / 'validation.json'}",
        *(f"dataset.ranges.{split}=[{a},{b}]" for split, (a, b) in ranges.items()),
    ]


WRITERS = {"streamingqa": write_streamingqa, "squad": write_squad, "archivalqa": write_archivalqa}


def write_model(root):
    """A random 2-layer GPT-2 with 64 positions and a byte-level BPE tokenizer trained on the
    fixture text, saved as one Hugging Face folder."""
    texts = [t for t, _ in documents()] + [q + " " + a for _, qas in documents() for q, a in qas]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts * 2, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=64,
    )
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
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
    python(
        "train_qa.py",
        *common,
        f"model={model}",
        "batch_size=4",
        "grad_acc_steps=1",
        "max_steps=2",
        "val_steps=1",
        "eval_batch_size=8",
        f"hydra.run.dir={qa_dir}",
        cwd=tmp_path,
    )
    state_dict = qa_dir / "checkpoints" / "lowest_nll" / "state_dict.pt"
    assert state_dict.is_file()
    base = [f"base_model={model}", f"base_model_state_dict={state_dict}", "progress=false"]

    # 2. CaMeLS meta-training, two outer steps (a body other than distilgpt2 is named, as a user would)
    train_dir = tmp_path / "meta"
    python(
        "run.py",
        "task=train",
        "model=CaMeLS",
        *common,
        *base,
        f"model.pretrained_model={model}",
        f"web_text_csv={web_text}",
        "update_batch_size=2",
        "grad_acc_steps=1",
        "reset_base_freq=4",
        "max_outer_steps=2",
        "val_batches=1",
        f"hydra.run.dir={train_dir}",
        cwd=tmp_path,
    )
    checkpoint = train_dir / "checkpoints" / "best"
    assert checkpoint.is_dir()
    steps = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps if row["split"] == "train"] == [1, 2]

    # 3. every method over two learning rates on the validation stream, in one sweep
    sweep = tmp_path / "sweep"
    python(
        "run.py",
        "-m",
        "task=eval",
        *common,
        *base,
        "split=val",
        "model=uniform,ssm,TFIDF,CaMeLS",
        f"weight_model_path={checkpoint}",
        "lr=1e-4,1e-3",
        "eval=[em,em2,ppl]",
        "eval_batch_size=8",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    summaries = [json.loads(p.read_text()) for p in sweep.rglob("summary.json")]
    assert sorted((s["method"], s["lr"]) for s in summaries) == sorted(
        (m, lr) for m in ("uniform", "ssm", "TFIDF", "CaMeLS") for lr in (1e-4, 1e-3)
    )
    for summary in summaries:
        assert summary["n_documents"] == SPLIT_SIZES["val"] and summary["n_questions"] == 2 * SPLIT_SIZES["val"]
        assert summary["decoding"] == "beam" and summary["top_k"] == 2 and summary["nll"] > 0
        assert 0 <= summary["em"] <= summary["em_at_k"] <= 1

    # 4. the table
    python("report.py", str(sweep), cwd=tmp_path)
    table = pd.read_csv(sweep / "report" / "results.csv")
    assert set(table["method"]) == {"uniform", "ssm", "TFIDF", "CaMeLS"} and len(table) == 8


def write_llama_model(root):
    """A random 2-layer Llama-shaped model with a SentencePiece-style Unigram tokenizer (▁ for spaces,
    byte fallback) trained on the fixture text, saved as one Hugging Face folder: a base model of
    another family and tokenizer than the GPT-2 of `write_model`."""
    from test_transfer import unigram_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [t for t, _ in documents()] + [q + " " + a for _, qas in documents() for q, a in qas]
    tokenizer = unigram_tokenizer(texts * 2, vocab_size=300)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def across_tokenizers(tmp_path_factory):
    """StreamingQA fixture files, the Llama-shaped base, the GPT-2 body and a web-text CSV."""
    root = tmp_path_factory.mktemp("across")
    (root / "data").mkdir()
    common = ["dataset=streamingqa", *write_streamingqa(root / "data"), "device=cpu", "progress=false"]
    llama, body = write_llama_model(root / "llama-random"), write_model(root / "gpt2-random")
    pd.DataFrame({"raw_text": [t for t, _ in documents()][:6]}).to_csv(root / "openwebtext.csv", index=False)
    return common, llama, body, root / "openwebtext.csv"


@pytest.mark.slow
def test_camels_of_another_tokenizer_evaluates_a_llama_base(across_tokenizers, tmp_path):
    """run.py task=eval with a Llama-shaped base (Unigram tokenizer) and a saved CaMeLS whose body is a
    GPT-2 with byte-level BPE: the weights go through the text, and the base's documents are cut to the
    base's 256 positions, not the body's 64 (the body reads its tokens in windows)."""
    from omegaconf import OmegaConf

    import weight_model as W
    from plumbing.loading import load_tokenizer

    common, llama, body, _ = across_tokenizers
    model = W.build_weight_model(
        OmegaConf.create({"name": "CaMeLS", "pretrained_model": str(body), "head_width": 8}), load_tokenizer(llama)
    )
    assert model.base_tokenizer is not None
    model.save(tmp_path / "wm")
    result = python(
        str(REPO / "run.py"),
        "task=eval",
        "model=CaMeLS",
        *common,
        f"base_model={llama}",
        "split=val",
        f"weight_model_path={tmp_path / 'wm'}",
        "eval=[em,ppl]",
        "eval_batch_size=8",
        "lr=1e-3",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["method"] == "CaMeLS" and summary["n_documents"] == SPLIT_SIZES["val"]
    assert summary["nll"] > 0 and 0 <= summary["em"] <= 1
    assert "lengths cut to the models' 256 positions: documents 256 tokens" in result.stdout + result.stderr
    assert "maximum sequence length" not in result.stderr


@pytest.mark.slow
def test_camels_meta_trains_against_a_base_of_another_tokenizer(across_tokenizers, tmp_path):
    """run.py task=train with the Llama-shaped base and model.pretrained_model the GPT-2 body: two
    outer steps (the torch_func inner loop, as `higher` cannot patch Llama's layer list), and the
    checkpoint carries the body's tokenizer."""
    common, llama, body, web_text = across_tokenizers
    python(
        str(REPO / "run.py"),
        "task=train",
        "model=CaMeLS",
        *common,
        f"base_model={llama}",
        f"model.pretrained_model={body}",
        f"web_text_csv={web_text}",
        "update_batch_size=2",
        "grad_acc_steps=1",
        "reset_base_freq=4",
        "max_outer_steps=2",
        "val_batches=1",
        "inner_backend=torch_func",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps if row["split"] == "train"] == [1, 2]
    assert all(np.isfinite(row["loss"]) for row in steps if "loss" in row)
    assert (tmp_path / "checkpoints" / "best" / "tokenizer").is_dir()
