"""train_qa.py: best-checkpoint selection, early stopping, a short real run, the CLI."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose, run_script
from omegaconf import OmegaConf

import train_qa
from exp_datasets import QACollator, load_split
from plumbing import errors, loading
from subroutines import evaluate_qa, question_sample

# ---------------------------------------------------------------------------------------------
# Selection and early stopping on a scripted sequence of validations

SCRIPT = [  # step, nll, em, f1
    (0, 3.0, 0.0, 0.10),
    (1, 2.5, 0.0, 0.20),  # better nll and f1; em ties -> earlier kept
    (2, 2.6, 0.1, 0.20),  # better em; f1 ties
    (3, 2.5, 0.1, 0.30),  # nll ties (no improvement); better f1
    (4, 2.4, 0.05, float("nan")),  # better nll; NaN f1 is never best
    (5, 2.45, 0.0, 0.25),
    (6, 2.41, 0.0, 0.10),
]


def test_best_tracker_keeps_strictly_better_validations():
    tracker = train_qa.BestTracker()
    improved = [tracker.update(dict(nll=nll, em=em, f1=f1), step, epoch=1) for step, nll, em, f1 in SCRIPT]
    assert improved == [
        ["lowest_nll", "highest_f1", "highest_em"],
        ["lowest_nll", "highest_f1"],
        ["highest_em"],
        ["highest_f1"],
        ["lowest_nll"],
        [],
        [],
    ]
    assert {name: (r["step"], r["value"]) for name, r in tracker.best.items()} == {
        "lowest_nll": (4, 2.4),
        "highest_f1": (3, 0.30),
        "highest_em": (2, 0.1),
    }


def test_early_stopping_counts_validations_without_a_lower_nll():
    stops = []
    for patience in (1, 2, 3):
        stopper = train_qa.EarlyStopping(patience)
        stops.append(next((step for step, nll, _, _ in SCRIPT if stopper.update(nll)), None))
    # lower nll at steps 0, 1, 4; stale runs: step 2-3 (2 long), steps 5-6 (2 long)
    assert stops == [2, 3, None]
    never = train_qa.EarlyStopping(None)
    assert not any(never.update(v) for v in [1.0] + [2.0] * 20)
    nan_stopper = train_qa.EarlyStopping(2)
    assert [nan_stopper.update(v) for v in (1.0, float("nan"), float("nan"))] == [False, False, True]


# ---------------------------------------------------------------------------------------------
# A short real run on the small tiny world


def run_overrides(world, **extra):
    # torch_threads=null: leave the test session's thread count alone
    base = dict(
        model=str(world.base_model),
        **{"dataset.data_dir": str(world.data_dir)},
        device="cpu",
        torch_threads="null",
        seed=0,
        max_val_questions=24,
        eval_batch_size=24,
        max_new_tokens=6,
    )
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def short_run(tiny_world_small, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("qa_run")
    cfg = compose(
        "qa_conf",
        run_overrides(
            tiny_world_small, lr=3e-3, batch_size=8, grad_acc_steps=2, val_steps=4, max_steps=12, stop_k="null"
        ),
    )
    history = train_qa.train_qa(cfg, run_dir)
    return cfg, run_dir, history


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_short_run_lowers_validation_nll_and_logs_every_validation(short_run):
    cfg, run_dir, history = short_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows == history
    assert [r["step"] for r in rows] == [0, 4, 8, 12]
    assert rows[0]["train_loss"] is None and all(r["train_loss"] > 0 for r in rows[1:])
    assert rows[-1]["val_nll"] < rows[0]["val_nll"] - 0.05
    n_val = len(load_split(cfg.dataset, "qa_val"))
    assert all(r["val_questions"] == min(24, n_val) for r in rows)


def test_best_json_and_checkpoints_match_the_metrics(short_run, tiny_world_small):
    cfg, run_dir, history = short_run
    best = json.loads((run_dir / "best.json").read_text())
    lowest = min(history, key=lambda r: r["val_nll"])  # min() keeps the first of ties, as the tracker does
    assert (best["lowest_nll"]["step"], best["lowest_nll"]["value"]) == (lowest["step"], lowest["val_nll"])
    for name, key in (("highest_f1", "val_f1"), ("highest_em", "val_em")):
        top = max(history, key=lambda r: r[key])
        assert (best[name]["step"], best[name]["value"]) == (top["step"], top[key])
    for name in ("lowest_nll", "highest_f1", "highest_em"):
        folder = run_dir / "checkpoints" / name
        assert Path(best[name]["path"]) == folder
        assert {"config.json", "state_dict.pt", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]

    # the lowest-NLL checkpoint, reloaded, scores exactly the NLL recorded for it
    folder = run_dir / "checkpoints" / "lowest_nll"
    model = loading.load_causal_lm(folder)
    tokenizer = loading.load_tokenizer(folder)
    val = question_sample(load_split(cfg.dataset, "qa_val"), cfg.max_val_questions, cfg.seed)
    _, summary = evaluate_qa(
        model,
        tokenizer,
        val,
        QACollator.from_config(tokenizer, cfg.dataset),
        "cpu",
        eval_modes=("ppl",),
        batch_size=24,
        progress=False,
    )
    assert summary["nll"] == pytest.approx(best["lowest_nll"]["value"], rel=1e-5)


def test_state_dict_round_trips_into_the_base_architecture(short_run, tiny_world_small):
    _, run_dir, _ = short_run
    folder = run_dir / "checkpoints" / "lowest_nll"
    ids = torch.tensor([[5, 17, 42, 9, 3, 11]])
    untouched = loading.load_causal_lm(tiny_world_small.base_model).eval()
    from_state = loading.load_causal_lm(tiny_world_small.base_model, folder / "state_dict.pt").eval()
    from_folder = loading.load_causal_lm(folder).eval()
    with torch.no_grad():
        before, via_state, via_folder = (m(input_ids=ids).logits for m in (untouched, from_state, from_folder))
    assert torch.equal(via_state, via_folder)
    assert not torch.allclose(before, via_state)


def test_early_stopping_ends_a_diverging_run(tiny_world_small, tmp_path):
    # a learning rate this large wrecks the model, so no validation beats the one before training
    cfg = compose(
        "qa_conf",
        run_overrides(
            tiny_world_small,
            optimizer="sgd",
            lr=50.0,
            grad_clip_thresh=1e9,
            batch_size=8,
            grad_acc_steps=1,
            val_steps=1,
            stop_k=2,
            max_steps=40,
            max_new_tokens=2,
        ),
    )
    history = train_qa.train_qa(cfg, tmp_path)
    assert [r["step"] for r in history] == [0, 1, 2]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["lowest_nll"]["step"] == 0


# ---------------------------------------------------------------------------------------------
# The run folder: continuing an interrupted run, a finished run, other options


class Killed(Exception):
    pass


def test_an_interrupted_run_continues_to_the_uninterrupted_result(short_run, tiny_world_small, tmp_path, monkeypatch):
    cfg, full_dir, full_history = short_run
    validate = train_qa.Trainer.validate

    def killed_after_step_8(self, step, epoch, train_loss):
        stop = validate(self, step, epoch, train_loss)
        if step == 8:
            raise Killed
        return stop

    monkeypatch.setattr(train_qa.Trainer, "validate", killed_after_step_8)
    with pytest.raises(Killed):
        train_qa.train_qa(cfg, tmp_path)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 4, 8]
    assert (tmp_path / train_qa.RESUME_STATE).is_file() and not (tmp_path / train_qa.DONE).exists()

    monkeypatch.setattr(train_qa.Trainer, "validate", validate)
    history = train_qa.train_qa(cfg, tmp_path)
    timing = ("elapsed_s",)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(history) == strip(full_history)  # same batches, same optimiser state: the same numbers
    assert strip(read_jsonl(tmp_path / "metrics.jsonl")) == strip(full_history)
    assert not (tmp_path / train_qa.RESUME_STATE).exists() and (tmp_path / train_qa.DONE).is_file()
    for name in ("lowest_nll", "highest_f1"):
        resumed = torch.load(tmp_path / "checkpoints" / name / "state_dict.pt")
        uninterrupted = torch.load(full_dir / "checkpoints" / name / "state_dict.pt")
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_a_finished_run_has_nothing_to_do_and_other_options_are_refused(short_run, tiny_world_small, capsys):
    cfg, run_dir, history = short_run
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert train_qa.train_qa(cfg, run_dir) == history
    assert "nothing to do" in capsys.readouterr().out
    other = compose(
        "qa_conf",
        run_overrides(
            tiny_world_small, lr=1e-3, batch_size=8, grad_acc_steps=2, val_steps=4, max_steps=12, stop_k="null"
        ),
    )
    with pytest.raises(errors.UsageError, match=r"holds a run with other options \(lr: 0.003 -> 0.001\)"):
        train_qa.train_qa(other, run_dir)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == files


def test_overwrite_replaces_a_run_with_other_options(tiny_world_small, tmp_path):
    first = compose("qa_conf", run_overrides(tiny_world_small, lr=3e-3, batch_size=8, val_steps=2, max_steps=2))
    train_qa.train_qa(first, tmp_path)
    second = compose(
        "qa_conf", run_overrides(tiny_world_small, lr=1e-3, batch_size=8, val_steps=1, max_steps=1, overwrite="true")
    )
    history = train_qa.train_qa(second, tmp_path)
    assert [r["step"] for r in history] == [0, 1]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1]
    assert json.loads((tmp_path / "run_options.json").read_text())["lr"] == 1e-3


# ---------------------------------------------------------------------------------------------
# Command line


@pytest.mark.slow
def test_cfg_resolves_with_tiny_world_presets_and_output_layout(tiny_world_small):
    result = run_script(
        "train_qa.py",
        "--cfg",
        "all",
        "--resolve",
        f"model={tiny_world_small.base_model}",
        f"dataset.data_dir={tiny_world_small.data_dir}",
        f"dataset.web_text_csv={tiny_world_small.data_dir / 'web_text.csv'}",
        "val_steps=7",
    )
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.create(result.stdout)
    assert cfg.val_steps == 7  # the command line wins over the dataset preset...
    preset = OmegaConf.load(REPO / "qa_conf" / "tuning" / "tiny_world.yaml")
    assert (cfg.lr, cfg.torch_threads) == (preset.lr, preset.torch_threads)  # ...which wins over the defaults
    run_dir = Path(cfg.hydra.run.dir)
    assert run_dir.parts[:3] == ("outputs", "qa_pretraining", "tiny_world") and len(run_dir.parts) == 4
    assert run_dir.name.startswith(f"{tiny_world_small.base_model.parent.name}_base_model-")
    assert run_dir.name.endswith(f"-lr{cfg.lr}-bs{cfg.batch_size}x{cfg.grad_acc_steps}-seed42")


def test_published_defaults_hold_for_real_datasets():
    cfg = compose("qa_conf", ["dataset=squad", "model=gpt2-xl"])
    assert (cfg.batch_size, cfg.grad_acc_steps, cfg.optimizer, cfg.lr, cfg.grad_clip_thresh, cfg.val_steps) == (
        32,
        2,
        "adam",
        2.5e-5,
        100,
        512,
    )


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model=/no/such/model", "cannot load a causal LM from '/no/such/model'"),
        ("dataset.data_dir=/no/such/folder", "data_dir /no/such/folder"),
        ("batch_size=0", "batch_size=0"),
        ("optimizer=rmsprop", "optimizer=rmsprop"),
        ("max_val_questions=-3", "max_val_questions=-3"),
        ("lr=-2.5e-5", "lr=-2.5e-05 is invalid; it must be a positive number"),
    ],
)
def test_bad_input_is_one_line_before_training(tiny_world_small, tmp_path, override, expected):
    cfg = compose("qa_conf", run_overrides(tiny_world_small) + [override])
    with pytest.raises(errors.UsageError) as raised:
        train_qa.train_qa(cfg, tmp_path)
    message = str(raised.value)
    assert expected in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_without_the_package_is_a_usage_error(tiny_world_small, tmp_path):
    cfg = compose("qa_conf", run_overrides(tiny_world_small, wandb="true"))
    with pytest.raises(errors.UsageError, match="pip install wandb or set wandb=false"):
        train_qa.train_qa(cfg, tmp_path)


@pytest.mark.slow
def test_cli_bad_input_exits_2_with_one_line(tiny_world_small, tmp_path):
    result = run_script(
        "train_qa.py",
        f"model={tiny_world_small.base_model}",
        "dataset.data_dir=/no/such/folder",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "/no/such/folder" in lines[0], result.stderr
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
