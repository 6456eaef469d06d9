"""CaMeLS meta-training on the small tiny world: configuration checks, the base model's carried
state and its bit-exact restoration, answer-token bookkeeping, the weight renderer, and a short
run that must learn to upweight answers."""

import html
import json
import re

import pytest
import torch
from conftest import OFFLINE_ENV, compose, run_script, train_world_overrides

import meta_train
import weight_analysis
from exp_datasets import QACollator, answer_spans, load_split
from plumbing import loading
from plumbing.errors import UsageError


def train_config(world, out_dir, *overrides):
    """The real Hydra config of `run.py task=train model=CaMeLS`, pointed at the small world."""
    return compose(
        "conf",
        [
            "task=train",
            "model=CaMeLS",
            "dataset=tiny_world",
            *train_world_overrides(world),
            f"output_dir={out_dir}",
            "progress=false",
            "device=cpu",
            *overrides,
        ],
    )


def test_tiny_world_tuning_applies_and_command_line_wins(tiny_world_small, tmp_path):
    cfg = train_config(tiny_world_small, tmp_path)
    assert cfg.task_name == "train"
    assert cfg.inner_lr != 5.0e-4, "the tiny world's own tuning should replace the published inner_lr"
    assert cfg.model.normalize, "the tuning may set model options too"
    tuned = train_config(tiny_world_small, tmp_path, "inner_lr=0.25", "model.normalize=false")
    assert tuned.inner_lr == 0.25 and not tuned.model.normalize
    published = train_config(tiny_world_small, tmp_path, "dataset=streamingqa")
    assert (
        published.inner_lr,
        published.outer_lr,
        published.update_batch_size,
        published.reset_base_freq,
        published.model.normalize,
    ) == (5.0e-4, 1.0e-5, 6, 24, False)


@pytest.mark.parametrize(
    "override,message",
    [
        ("reset_base_freq=10", "multiple of update_batch_size"),
        ("inner_backend=jax", "inner_backend"),
        ("grad_checkpointing=true", "torch_func"),
        ("inner_lr=0", "inner_lr=0.0 is invalid; it must be a positive number"),
        ("inner_backend=forward grad_checkpointing=true", "torch_func"),
        ("inner_backend=forward forward_probes=0", "forward_probes=0 is invalid"),
        ("inner_backend=torch_func checkpoint_every=2", "checkpoint_every=2 needs grad_checkpointing=true"),
        ("inner_backend=torch_func grad_checkpointing=true checkpoint_every=0", "checkpoint_every=0 is invalid"),
        ("inner_backend=torch_func forward_mix=true", "forward_mix=true needs inner_backend=forward"),
        ("inner_autocast=float8", "inner_autocast=float8 is unknown"),
        ("c_kl=-0.1", "c_kl=-0.1 is invalid; it must be a number >= 0"),
    ],
)
def test_bad_options_fail_before_work(tiny_world_small, tmp_path, override, message):
    cfg = train_config(tiny_world_small, tmp_path / "run", *override.split())
    with pytest.raises(UsageError, match=message):
        meta_train.train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_reports_reset_frequency_in_one_line(tiny_world_small, tmp_path):
    world = tiny_world_small
    result = run_script(
        "run.py",
        "task=train",
        "model=CaMeLS",
        "reset_base_freq=7",
        *train_world_overrides(world),
        f"output_dir={tmp_path / 'run'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "reset_base_freq=7" in lines[0] and "update_batch_size=6" in lines[0]


def make_trainer(world, out_dir, *overrides):
    from weight_model import build_weight_model

    cfg = train_config(world, out_dir, *overrides)
    meta_train.check_config(cfg)
    tokenizer = loading.load_tokenizer(cfg.base_model)
    base_model = loading.load_causal_lm(cfg.base_model, attn_implementation="eager").eval()
    weight_model = build_weight_model(cfg.model, tokenizer)
    return meta_train.MetaTrainer(
        cfg,
        base_model,
        weight_model,
        tokenizer,
        load_split(cfg.dataset, "train"),
        load_split(cfg.dataset, "val"),
        ["An unrelated text about the sea."],
        out_dir,
        torch.device("cpu"),
    )


def base_state(trainer):
    return [p.detach().clone() for p in trainer.base_model.parameters()]


def same(state_a, state_b):
    return all(torch.equal(a, b) for a, b in zip(state_a, state_b))


def test_base_model_carried_then_reset_and_restored_after_validation(tiny_world_small, tmp_path):
    trainer = make_trainer(
        tiny_world_small, tmp_path, "update_batch_size=2", "reset_base_freq=4", "val_batches=2", "inner_lr=0.05"
    )
    start = base_state(trainer)
    batches = meta_train.batched(trainer.train_examples, 2)
    trainer.train_batch(batches[0])
    after_first = base_state(trainer)
    assert not same(after_first, start), "the updated base weights carry over to the next batch"
    assert all(p.grad is None for p in trainer.base_model.parameters())

    validation = trainer.validate()
    assert same(base_state(trainer), after_first), "validation restores the training state bit for bit"
    assert trainer.docs_since_reset == 2
    assert validation["qa_gain"] == pytest.approx(validation["qa_before"] - validation["qa_loss"])
    assert validation == trainer.validate(), "validation starts from the same weights every time"

    trainer.train_batch(batches[1])  # 4 documents: the reset frequency
    assert same(base_state(trainer), start), "reset_base_freq documents restore the starting weights bit for bit"
    assert trainer.docs_since_reset == 0


def test_answer_token_mask_covers_the_answer(tiny_world_small):
    tokenizer = loading.load_tokenizer(tiny_world_small.base_model)
    examples = load_split(tiny_world_small.dataset_cfg, "val")[:8]
    collator = QACollator(tokenizer, max_text_len=256)
    batch = answer_spans.make_batch(collator, examples, torch.device("cpu"))
    assert batch["has_span"].all()
    for row, example in enumerate(examples):
        start, end = int(example.extra["answer_start"]), int(example.extra["answer_end"])
        assert example.text[start:end] == example.answer
        marked = batch["text_ids"][row][batch["answer_mask"][row]].tolist()
        decoded = tokenizer.decode(marked).strip()
        assert example.answer in decoded
        # the marked tokens are contiguous and every one of them overlaps the answer
        positions = batch["answer_mask"][row].nonzero().flatten().tolist()
        assert positions == list(range(positions[0], positions[-1] + 1))
        assert len(decoded) < len(example.answer) + 3


def test_render_weights_escapes_text_and_writes_png(tiny_world_small, tmp_path):
    tokenizer = loading.load_tokenizer(tiny_world_small.base_model)
    texts = ["a <b>bold</b> & 'quoted' claim", "short"]
    ids, mask = QACollator(tokenizer).encode_texts(texts)
    weights = torch.rand(ids.shape) * mask
    highlight = torch.zeros_like(mask, dtype=torch.bool)
    highlight[0, 2] = True
    weight_analysis.render_weights(
        tokenizer,
        ids,
        weights,
        tmp_path / "w.html",
        tmp_path / "w.png",
        attention_mask=mask,
        highlight=highlight,
        titles=["<doc one>", "doc two"],
    )
    page = (tmp_path / "w.html").read_text()
    assert "<b>" not in page and "&lt;doc one&gt;" in page
    documents = re.findall(r"<div class='doc'>(.*?)</div>", page)
    shown = [html.unescape("".join(re.findall(r"<span [^>]*>([^<]*)</span>", doc))) for doc in documents]
    assert shown == texts, "every token is shown once, escaped"
    assert page.count("class='tok") == int(mask.sum()) and page.count("class='tok ans'") == 1
    assert (tmp_path / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_short_meta_training_learns_to_weight_answers(tiny_world_small, tmp_path):
    """The small world's base model knows little, so the weight model mostly learns to scale all
    weights up; normalised weights (mean 1) and a trained head only leave it where to put them."""
    from weight_model import load_weight_model

    cfg = train_config(
        tiny_world_small,
        tmp_path,
        "max_outer_steps=12",
        "val_steps=6",
        "sample_steps=6",
        "val_batches=3",
        "n_epochs=20",
        "update_batch_size=3",
        "reset_base_freq=6",
        "grad_acc_steps=1",
        "inner_lr=1.0",
        "outer_lr=3e-3",
        "model.normalize=true",
        "model.freeze_base=true",
    )
    summary = meta_train.train(cfg)
    start, end = summary["val_start"], summary["val_end"]
    assert summary["steps"] == 12
    assert end["total"] < start["total"]
    assert end["answer_weight_share"] > start["answer_weight_share"]
    assert start["answer_weight_share"] == pytest.approx(start["answer_token_share"]), "the untrained head is uniform"

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 13))
    assert [r["step"] for r in rows if r["split"] == "val"] == [0, 6, 12]
    best = min((r for r in rows if r["split"] == "val"), key=lambda r: r["total"])
    state = json.loads((tmp_path / "checkpoints" / "best" / "training_state.json").read_text())
    assert state["step"] == best["step"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        f"step_{s:06d}.{ext}" for s in (0, 6, 12) for ext in ("html", "png")
    ]

    # the last checkpoint is the trained weight model, loadable by task=eval
    tokenizer = loading.load_tokenizer(cfg.base_model)
    loaded = load_weight_model(tmp_path / "checkpoints" / "last", tokenizer)
    ids, mask = QACollator(tokenizer).encode_texts(["The harbour of Tarnford was rebuilt."])
    weights = loaded(ids, mask)
    assert weights.std() > 1e-4 and weights.mean().item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.slow
def test_resumed_run_continues_exactly(tiny_world_small, tmp_path):
    """A run stopped after 3 optimiser steps and resumed to 6 ends with the weights, metrics and
    checkpoints of an uninterrupted 6-step run."""
    from weight_model import load_weight_model

    knobs = [
        "val_steps=3",
        "sample_steps=100",
        "sample_docs=1",
        "val_batches=1",
        "update_batch_size=2",
        "reset_base_freq=6",
        "grad_acc_steps=2",
        "inner_lr=1.0",
        "outer_lr=3e-3",
        "n_epochs=20",
    ]
    whole = meta_train.train(train_config(tiny_world_small, tmp_path / "whole", "max_outer_steps=6", *knobs))
    meta_train.train(train_config(tiny_world_small, tmp_path / "part", "max_outer_steps=3", *knobs))
    resumed = meta_train.train(
        train_config(
            tiny_world_small, tmp_path / "unused", "max_outer_steps=6", f"resume_from={tmp_path / 'part'}", *knobs
        )
    )
    assert not (tmp_path / "unused").exists()
    assert resumed["val_end"] == whole["val_end"] and resumed["val_start"] == whole["val_start"]

    def rows(run):
        timing = ("step_s", "elapsed_s")
        return [
            {k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        ]

    assert rows("part") == rows("whole")
    for name in ("last", "best"):
        a = load_weight_model(tmp_path / "whole" / "checkpoints" / name).state_dict()
        b = load_weight_model(tmp_path / "part" / "checkpoints" / name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_epoch_checkpoints_at_epoch_ends_but_not_after_a_step_cap(tiny_world_small, tmp_path):
    n_batches = -(-len(load_split(tiny_world_small.dataset_cfg, "train")) // 6)  # the last may be partial
    knobs = [
        "val_steps=100",
        "sample_steps=100",
        "sample_docs=1",
        "val_batches=1",
        "update_batch_size=6",
        "reset_base_freq=6",
        "sequential_update=false",
        f"grad_acc_steps={n_batches - 1}",
    ]  # one full step per epoch, one batch left over
    summary = meta_train.train(train_config(tiny_world_small, tmp_path / "natural", "n_epochs=2", *knobs))
    assert summary["steps"] == 4  # the batch left over steps at the epoch's end, as the reference does
    assert sorted(p.name for p in (tmp_path / "natural" / "checkpoints").iterdir()) == [
        "best",
        "epoch_1",
        "epoch_2",
        "last",
    ]
    meta_train.train(train_config(tiny_world_small, tmp_path / "capped", "n_epochs=2", "max_outer_steps=1", *knobs))
    assert sorted(p.name for p in (tmp_path / "capped" / "checkpoints").iterdir()) == ["best", "last"]


MEMORY_KNOBS = [
    "max_outer_steps=2",
    "val_steps=100",
    "sample_steps=100",
    "sample_docs=1",
    "val_batches=1",
    "update_batch_size=2",
    "reset_base_freq=6",
    "grad_acc_steps=2",
    "inner_lr=1.0",
    "outer_lr=3e-3",
    "n_epochs=20",
    "model.normalize=true",
    "model.freeze_base=true",
    "seed=3",
]


def trained_head(run_dir):
    from weight_model import load_weight_model

    return load_weight_model(run_dir / "checkpoints" / "last").head.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("every", [1, 2])
def test_checkpointed_meta_training_trains_like_plain(tiny_world_small, tmp_path, every):
    """inner_backend=torch_func grad_checkpointing=true (checkpoint_every 1 or 2): the same weight
    model as without."""
    runs = {}
    for name, extra in (("plain", []), ("checkpointed", ["grad_checkpointing=true", f"checkpoint_every={every}"])):
        runs[name] = meta_train.train(
            train_config(tiny_world_small, tmp_path / name, "inner_backend=torch_func", *extra, *MEMORY_KNOBS)
        )
    assert runs["plain"]["val_end"] == pytest.approx(runs["checkpointed"]["val_end"], rel=1e-5)
    plain, checkpointed = trained_head(tmp_path / "plain"), trained_head(tmp_path / "checkpointed")
    assert plain["2.weight"].abs().max() > 0, "the zero-initialised output layer should have moved"
    assert all(torch.allclose(plain[k], checkpointed[k], rtol=1e-4, atol=1e-7) for k in plain)


@pytest.mark.slow
@pytest.mark.parametrize("mix", ["false", "true"])
def test_forward_mode_meta_training_runs_and_moves_the_weights(tiny_world_small, tmp_path, mix):
    """inner_backend=forward forward_probes=2 (alone, or correcting the first-order meta-gradient:
    forward_mix) through run.py: it trains (finite losses, a non-zero estimated gradient that
    moves the weight model) and writes the usual outputs."""
    world = tiny_world_small
    result = run_script(
        "run.py",
        "task=train",
        "model=CaMeLS",
        "inner_backend=forward",
        "forward_probes=2",
        f"forward_mix={mix}",
        "dataset=tiny_world",
        *train_world_overrides(world),
        f"output_dir={tmp_path / 'run'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "progress=false",
        "device=cpu",
        "torch_threads=1",
        *MEMORY_KNOBS,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert all(r["grad_norm"] > 0 and torch.isfinite(torch.tensor(r["outer_loss"])) for r in train_rows)
    assert trained_head(tmp_path / "run")["2.weight"].abs().max() > 0, "the zero-initialised output layer moved"


@pytest.mark.slow  # runs run.py in a subprocess
def test_cli_refuses_a_weight_model_with_nothing_to_learn_before_building_anything(tmp_path):
    """The default model is uniform; the run folder's name needs the tiny world, whose first build
    takes minutes: the refusal comes first, and nothing is built or written."""
    cache = tmp_path / "cache"
    result = run_script(
        "run.py",
        "task=train",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        timeout=120,
        env=dict(OFFLINE_ENV, CAMELS_CACHE_DIR=str(cache)),
    )
    assert result.returncode == 2
    expected = "error: model=uniform has nothing to learn; task=train needs model=CaMeLS"
    assert result.stderr.strip().splitlines() == [expected]
    assert not cache.exists() and not (tmp_path / "hydra").exists()
