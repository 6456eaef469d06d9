"""Hostile inputs and interrupted runs: nothing in a file runs on load, a diverged run says so, run
folders are never silently overwritten, meta-training and evaluation resume exactly, sweeps and the
demo check every value before any work. One test per probe of the reliability table."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import OFFLINE_ENV, REPO, compose, run_script, train_world_overrides, world_overrides
from test_eval import compose_config as eval_config
from test_meta_train import train_config
from test_train_qa import run_overrides as qa_overrides

import demo
import evaluation
import meta_train
import train_qa
import weight_model as W
from exp_datasets import QACollator, load_split
from plumbing import checks, errors, files, loading
from plumbing.errors import UsageError
from subroutines import AdaptationSettings, weighted_train


def one_line_error(call, *args):
    with pytest.raises(UsageError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def strict_load(path):
    """json.loads that refuses NaN and Infinity tokens, as strict parsers do."""

    def refuse(token):
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def camels_folder(tiny_world_small, tmp_path_factory):
    """A saved (untrained) CaMeLS weight model on the small world's body."""
    cfg = eval_config(tiny_world_small, ["model=CaMeLS", f"model.pretrained_model={tiny_world_small.base_model}"])
    folder = tmp_path_factory.mktemp("wm") / "camels"
    W.build_weight_model(cfg.model, loading.load_tokenizer(tiny_world_small.base_model)).save(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Loading: one test per row of bad files


class WritesAFile:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_object_as_weight_model_never_runs(tiny_world_small, tmp_path):
    marker = tmp_path / "marker"
    torch.save({"state_dict": WritesAFile(marker)}, tmp_path / "evil.pt")
    cfg = eval_config(tiny_world_small, ["model=CaMeLS", f"weight_model_path={tmp_path / 'evil.pt'}"])
    message = one_line_error(evaluation.evaluate, cfg, tmp_path / "run")
    assert "re-save" in message and "torch.save(model.state_dict()" in message
    message = one_line_error(loading.load_causal_lm, tiny_world_small.base_model, tmp_path / "evil.pt")
    assert "re-save" in message
    assert not marker.exists(), "the file's code ran"


def test_empty_csv_as_test_path(tiny_world_small, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    cfg = eval_config(tiny_world_small, [f"test_path={tmp_path / 'empty.csv'}"])
    assert "is empty" in one_line_error(evaluation.evaluate, cfg, tmp_path / "run")


def test_non_utf8_csv_in_evaluation_and_qa_tuning(tiny_world_small, tmp_path):
    rows = "text,question,answers\nCafé Nord opened in 1990.,When did Café Nord open?,1990\n"
    (tmp_path / "cp1252.csv").write_bytes(rows.encode("cp1252"))
    cfg = eval_config(tiny_world_small, [f"test_path={tmp_path / 'cp1252.csv'}"])
    message = one_line_error(evaluation.evaluate, cfg, tmp_path / "run")
    assert "is not UTF-8" in message and "0xe9" in message and "iconv" in message
    data = tmp_path / "data"
    shutil.copytree(tiny_world_small.data_dir, data)
    shutil.copy(tmp_path / "cp1252.csv", data / "qa_train.csv")
    qa_cfg = compose("qa_conf", qa_overrides(tiny_world_small, **{"dataset.data_dir": str(data)}))
    assert "is not UTF-8" in one_line_error(train_qa.train_qa, qa_cfg, tmp_path / "qa")


def test_corrupt_state_dict_for_evaluation_and_qa_tuning(tiny_world_small, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    torch.save(loading.load_causal_lm(tiny_world_small.base_model).state_dict(), corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])  # a cut-off download
    cfg = eval_config(tiny_world_small, [f"base_model_state_dict={corrupt}"])
    assert "not a readable torch file" in one_line_error(evaluation.evaluate, cfg, tmp_path / "run")
    qa_cfg = compose("qa_conf", qa_overrides(tiny_world_small, load_state_dict_path=str(corrupt)))
    assert "not a readable torch file" in one_line_error(train_qa.train_qa, qa_cfg, tmp_path / "qa")


def test_language_model_folder_as_weight_model_path(tiny_world_small, tmp_path):
    cfg = eval_config(tiny_world_small, ["model=CaMeLS", f"weight_model_path={tiny_world_small.base_model}"])
    message = one_line_error(evaluation.evaluate, cfg, tmp_path / "run")
    assert "is not a CaMeLS weight model folder" in message


def test_truncated_safetensors_in_a_camels_folder(tiny_world_small, camels_folder, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(camels_folder, folder)
    weights = folder / W.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:5000])
    cfg = eval_config(tiny_world_small, ["model=CaMeLS", f"weight_model_path={folder}"])
    assert "is damaged" in one_line_error(evaluation.evaluate, cfg, tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# Divergence


META_KNOBS = [
    "val_batches=1",
    "update_batch_size=3",
    "reset_base_freq=6",
    "grad_acc_steps=1",
    "sample_docs=1",
    "sample_steps=100",
    "n_epochs=20",
]


def test_meta_training_with_huge_learning_rates_stops_with_one_line(tiny_world_small, tmp_path):
    cfg = train_config(
        tiny_world_small,
        tmp_path / "run",
        "inner_lr=1e9",
        "outer_lr=10",
        "max_outer_steps=8",
        "val_steps=4",
        *META_KNOBS,
    )
    message = one_line_error(meta_train.train, cfg)
    assert "diverged" in message and "inner_lr" in message and "outer_lr" in message
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "summary.json").exists()


def test_nan_meta_training_keeps_the_last_good_checkpoint(tiny_world_small, tmp_path):
    """A too large outer_lr: the first step is fine, the validation after the second diverges."""
    cfg = train_config(
        tiny_world_small,
        tmp_path,
        "inner_lr=1.0",
        "outer_lr=3",
        "model.normalize=false",
        "max_outer_steps=20",
        "val_steps=1",
        *META_KNOBS,
    )
    message = one_line_error(meta_train.train, cfg)
    # at outer step 2 either the weight model's gradient or the validation after it is the first non-finite number
    assert "diverged" in message and ("after 2 outer steps is nan" in message or "at outer step 2 is inf" in message)
    last = tmp_path / "checkpoints" / "last"
    assert json.loads((last / "training_state.json").read_text())["step"] == 1
    for name in ("last", "best"):
        state = W.load_weight_model(tmp_path / "checkpoints" / name).state_dict()  # refuses non-finite weights
        assert all(torch.isfinite(v).all() for v in state.values())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [0, 1], "the diverged validation is not logged"
    assert all(value is not None for r in rows for value in r.values())
    strict_load(last / "training_state.json")


def test_diverged_evaluation_is_marked_and_nan_models_are_refused(tiny_world_small, camels_folder, tmp_path):
    cfg = eval_config(tiny_world_small, ["lr=1e6", "optimizer=sgd", "eval=[em,ppl]", "downsample_to=3"])
    message = one_line_error(evaluation.evaluate, cfg, tmp_path / "run")
    assert "diverged" in message and "lower lr" in message
    summary = strict_load(tmp_path / "run" / "summary.json")
    assert summary["diverged"] is True and summary["nll"] is None and summary["em"] is None
    strict_load(tmp_path / "run" / "metrics.json")

    nan_folder = tmp_path / "nan_wm"
    model = W.load_weight_model(camels_folder)
    with torch.no_grad():
        model.head[2].weight.fill_(float("nan"))
    model.save(nan_folder)
    cfg = eval_config(tiny_world_small, ["model=CaMeLS", f"weight_model_path={nan_folder}"])
    assert "non-finite" in one_line_error(evaluation.evaluate, cfg, tmp_path / "nan_wm_run")

    state = loading.load_causal_lm(tiny_world_small.base_model).state_dict()
    state["transformer.wte.weight"][0, 0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    cfg = eval_config(tiny_world_small, [f"base_model_state_dict={tmp_path / 'inf.pt'}"])
    assert "non-finite" in one_line_error(evaluation.evaluate, cfg, tmp_path / "inf_run")


# ---------------------------------------------------------------------------------------------
# Run folders


def test_rerun_into_a_finished_run_folder(tiny_world_small, tmp_path):
    folder = tmp_path / "eval"
    options = ["eval=[ppl]", "downsample_to=2", "lr=1e-3"]
    first = evaluation.evaluate(eval_config(tiny_world_small, options), folder)
    stamp = (folder / "summary.json").stat().st_mtime_ns
    assert evaluation.evaluate(eval_config(tiny_world_small, [*options, "progress=true"]), folder) == first
    assert (folder / "summary.json").stat().st_mtime_ns == stamp, "already complete: nothing is rewritten"
    message = one_line_error(evaluation.evaluate, eval_config(tiny_world_small, [*options[:-1], "lr=1e-4"]), folder)
    assert "lr: 0.001 -> 0.0001" in message and "overwrite=true" in message and "resume" in message
    replaced = evaluation.evaluate(eval_config(tiny_world_small, [*options[:-1], "lr=1e-4", "overwrite=true"]), folder)
    assert replaced["lr"] == 1e-4 and strict_load(folder / "summary.json")["lr"] == 1e-4

    knobs = ["max_outer_steps=1", "val_steps=1", *META_KNOBS]
    trained = meta_train.train(train_config(tiny_world_small, tmp_path / "train", *knobs))
    rows = (tmp_path / "train" / "metrics.jsonl").read_text()
    assert meta_train.train(train_config(tiny_world_small, tmp_path / "train", *knobs)) == trained
    assert (tmp_path / "train" / "metrics.jsonl").read_text() == rows, "no second run appended"
    message = one_line_error(meta_train.train, train_config(tiny_world_small, tmp_path / "train", *knobs, "c_kl=0.5"))
    assert "c_kl: 0.1 -> 0.5" in message and "overwrite=true" in message


def test_resume_of_meta_training_refuses_changed_options(tiny_world_small, tmp_path):
    knobs = [
        "val_steps=1",
        "sample_docs=1",
        "val_batches=1",
        "reset_base_freq=6",
        "grad_acc_steps=1",
        "sample_steps=100",
        "n_epochs=20",
    ]
    meta_train.train(
        train_config(tiny_world_small, tmp_path / "part", "max_outer_steps=1", "update_batch_size=6", *knobs)
    )
    resume = [f"resume_from={tmp_path / 'part'}", "max_outer_steps=2", *knobs]
    message = one_line_error(
        meta_train.train, train_config(tiny_world_small, tmp_path / "x", "update_batch_size=3", "inner_lr=0.3", *resume)
    )
    assert "update_batch_size: 6 -> 3" in message and "inner_lr: 0.1 -> 0.3" in message
    # where it stops, logging and hardware may change
    summary = meta_train.train(
        train_config(tiny_world_small, tmp_path / "x", "update_batch_size=6", "progress=true", *resume)
    )
    assert summary["steps"] == 2


def test_checkpoint_save_tolerates_leftovers_of_an_interrupted_save(tmp_path):
    target = tmp_path / "checkpoints" / "last"
    with files.atomic_dir(target) as folder:
        (folder / "a").write_text("1")
    (tmp_path / "checkpoints" / ".last.old" / "x").mkdir(parents=True)  # left by a save killed at its end
    with files.atomic_dir(target) as folder:
        (folder / "a").write_text("2")
    assert (target / "a").read_text() == "2" and not (tmp_path / "checkpoints" / ".last.old").exists()
    # killed between the two renames: the previous folder is put back before anything reads it
    os.replace(target, tmp_path / "checkpoints" / ".last.old")
    files.recover_dir(target)
    assert (target / "a").read_text() == "2"


def test_two_processes_recovering_one_checkpoint_folder_both_succeed(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last"
    with files.atomic_dir(target) as folder:
        (folder / "a").write_text("1")
    os.replace(target, tmp_path / "checkpoints" / ".last.old")  # killed between the two renames
    real_replace = os.replace

    def beaten_to_it(source, destination):
        real_replace(source, destination)  # the other rank puts the folder back first ...
        real_replace(source, destination)  # ... so this process's own rename finds nothing

    monkeypatch.setattr(files.os, "replace", beaten_to_it)
    files.recover_dir(target)
    assert (target / "a").read_text() == "1" and not (tmp_path / "checkpoints" / ".last.old").exists()


# ---------------------------------------------------------------------------------------------
# Evaluation resume


def test_stream_resumed_from_a_saved_state_ends_exactly_like_an_uninterrupted_one(tiny_world_small):
    tokenizer = loading.load_tokenizer(tiny_world_small.base_model)
    start = loading.load_causal_lm(tiny_world_small.base_model)  # dropout on: the random state matters
    collator = QACollator(tokenizer, max_text_len=64)
    texts = [e.text for e in load_split(tiny_world_small.dataset_cfg, "test")][:7]
    uniform = W.build_weight_model({"name": "uniform"}, tokenizer)
    settings = dict(optimizer="adam", lr=1e-3, batch_size=2, grad_acc_steps=2, n_epochs=2)

    def fresh():
        model = loading.load_causal_lm(tiny_world_small.base_model)
        model.load_state_dict(start.state_dict())
        return model

    states = []
    torch.manual_seed(0)
    whole = fresh()
    stats = weighted_train(
        whole,
        uniform,
        texts,
        collator,
        "cpu",
        AdaptationSettings(**settings, save_every_documents=3),
        progress=False,
        save_state=lambda s: states.append(json_free_copy(s)),
    )
    assert [s["documents_seen"] for s in states] == [4, 7, 11]  # after optimiser steps only, never at the end
    torch.manual_seed(123)  # the saved random state, not this one, drives the rest of the stream
    resumed = fresh()
    again = weighted_train(
        resumed, uniform, texts, collator, "cpu", AdaptationSettings(**settings), progress=False, resume_state=states[1]
    )
    assert again == stats
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def json_free_copy(state):
    """What a save writes and a resume reads back (tensors copied, so later steps cannot touch them)."""
    import copy

    return copy.deepcopy(state)


# ---------------------------------------------------------------------------------------------
# kill -9 and rerun the same command, through the command line


def kill_when(args, cwd, ready, timeout=240):
    """Start run.py, kill -9 it as soon as `ready()` holds; returns whether it was killed mid-run."""
    process = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=cwd,
        env=OFFLINE_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    while process.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.02)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return killed


def eval_args(world):
    return ["task=eval", *world_overrides(world), "device=cpu", "progress=false", "eval=[ppl]", "torch_threads=1"]


@pytest.mark.slow
def test_killed_evaluation_resumes_to_the_same_summary(tiny_world_small, tmp_path):
    args = [
        *eval_args(tiny_world_small),
        "downsample_to=-1",
        "n_epochs=12",
        "save_state_every=3",
        "lr=1e-3",
        "eval_init=true",
        "eval_every_k=50",
    ]
    whole = run_script("run.py", *args, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    state = tmp_path / "part" / evaluation.EVAL_STATE
    assert kill_when([*args, f"hydra.run.dir={tmp_path / 'part'}"], tmp_path, state.exists), "finished before the kill"
    assert not (tmp_path / "part" / "summary.json").exists()
    position = files.load_tensors(state, "state")["documents_seen"]
    resumed = run_script("run.py", *args, f"hydra.run.dir={tmp_path / 'part'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming the stream after document {position}" in resumed.stdout + resumed.stderr
    a, b = (strict_load(tmp_path / run_name / "summary.json") for run_name in ("whole", "part"))
    assert {k: v for k, v in a.items() if k not in ("wall_time_s", "run_dir")} == {
        k: v for k, v in b.items() if k not in ("wall_time_s", "run_dir")
    }
    curve = lambda name: strict_load(tmp_path / name / "metrics.json")["curve"]  # noqa: E731
    assert curve("whole") == curve("part") and len(curve("part")) > 1
    assert not state.exists(), "a finished run drops its resume state"


@pytest.mark.slow
def test_killed_meta_training_resumes_to_the_same_run(tiny_world_small, tmp_path):
    world = tiny_world_small
    args = [
        "task=train",
        "model=CaMeLS",
        *train_world_overrides(world),
        "device=cpu",
        "progress=false",
        "max_outer_steps=16",
        "val_steps=3",
        "inner_lr=1.0",
        "outer_lr=3e-3",
        *META_KNOBS,
    ]
    assert run_script("run.py", *args, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path).returncode == 0
    metrics = tmp_path / "part" / "metrics.jsonl"

    def past_a_checkpoint():  # a train row logged after the first checkpoint: it must not appear twice
        last = tmp_path / "part" / "checkpoints" / "last" / "training_state.json"
        if not last.exists() or not metrics.exists():
            return False
        saved = json.loads(last.read_text())["step"]
        return any(json.loads(line)["step"] > saved for line in metrics.read_text().splitlines() if line.strip())

    assert kill_when([*args, f"hydra.run.dir={tmp_path / 'part'}"], tmp_path, past_a_checkpoint)
    resumed = run_script("run.py", *args, f"hydra.run.dir={tmp_path / 'part'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    def rows(name):
        return [
            {k: v for k, v in json.loads(line).items() if k not in ("step_s", "elapsed_s")}
            for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]

    assert rows("part") == rows("whole")
    for name in ("last", "best"):
        a = W.load_weight_model(tmp_path / "whole" / "checkpoints" / name).state_dict()
        b = W.load_weight_model(tmp_path / "part" / "checkpoints" / name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cli_rerun_with_other_options_leaves_the_run_folder_untouched(tiny_world_small, tmp_path):
    args = [*eval_args(tiny_world_small), "downsample_to=2", f"hydra.run.dir={tmp_path / 'run'}"]
    assert run_script("run.py", *args, "lr=1e-3", cwd=tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.suffix != ".log"}
    result = run_script("run.py", *args, "lr=1e-4", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "lr: 0.001 -> 0.0001" in lines[0] and "overwrite=true" in lines[0]
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.suffix != ".log"}
    assert after == before, "neither the run's files nor Hydra's .hydra/ record changed"


# ---------------------------------------------------------------------------------------------
# Sweeps


@pytest.mark.slow
def test_sweep_checks_every_value_before_the_first_job(tiny_world_small, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "run.py",
        "-m",
        *eval_args(tiny_world_small),
        "downsample_to=2",
        "lr=1e-4,abc,1e-3",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "lr=abc is invalid" in lines[0] and "no job was started" in lines[0]
    assert not sweep_dir.exists(), "no job folder"


@pytest.mark.slow
def test_a_failed_sweep_job_does_not_stop_the_others(tiny_world_small, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "run.py",
        "-m",
        *eval_args(tiny_world_small),
        "downsample_to=3",
        "optimizer=sgd",
        "lr=1e9,1e-3",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "1 sweep job(s) failed, the others ran" in result.stderr.splitlines()[-1]
    folders = [path.parent for path in sweep_dir.rglob("summary.json")]
    (fine,), (diverged,) = (
        [f for f in folders if "-lr0.001-" in str(f)],
        [f for f in folders if "-lr0.001-" not in str(f)],
    )
    assert "diverged" in (diverged / "error.txt").read_text() and strict_load(diverged / "summary.json")["diverged"]
    assert strict_load(fine / "summary.json")["diverged"] is False and not (fine / "error.txt").exists()


# ---------------------------------------------------------------------------------------------
# demo.py


@pytest.mark.slow  # runs demo.py in a subprocess
@pytest.mark.parametrize(
    "option,message",
    [
        ("lrs=abc", "lrs=abc"),
        ("qa_checkpoint=highest_fl", "qa_checkpoint=highest_fl is unknown"),
        ("meta_train_overrides=[inner_lr=abc]", "meta_train_overrides: inner_lr=abc is invalid"),
        ("methods.ssm=[model=nope]", "Could not find 'model/nope'"),
    ],
)
def test_demo_checks_every_option_before_any_work(tmp_path, option, message):
    out = tmp_path / "demo"
    result = run_script("demo.py", option, f"out_dir={out}", cwd=tmp_path, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_lists_of_overrides_need_no_quotes():
    assert checks.quoted_list_overrides(
        ["meta_train_overrides=[inner_lr=0.1,eval=[em,ppl]]", "lrs=[1e-3,3e-3]", "x=['a=b']", "methods.ssm=[model=ssm]"]
    ) == [
        "meta_train_overrides=['inner_lr=0.1','eval=[em,ppl]']",
        "lrs=[1e-3,3e-3]",
        "x=['a=b']",
        "methods.ssm=['model=ssm']",
    ]


def test_demo_recomputes_a_step_whose_options_changed_and_the_steps_after_it(tmp_path, capsys):
    out = tmp_path / "demo"

    def write(name, text):
        return [
            "-c",
            f"import pathlib; p = pathlib.Path({str(out / name)!r}); p.mkdir(); (p / 'v').write_text({text!r})",
        ]

    def demo_run(first_text):
        pipeline = demo.Pipeline(out)
        pipeline.step("first", write("first", first_text), out / "first")
        pipeline.steps(
            {"second": (write("second", "b"), out / "second"), "third": (write("third", "c"), out / "third")}
        )

    demo_run("a")
    demo_run("a")
    assert capsys.readouterr().out.count("done before, skipped") == 3
    demo_run("changed")
    printed = capsys.readouterr().out
    assert "first: its options changed; recomputing it" in printed
    assert printed.count("an earlier step was recomputed; recomputing it") == 2
    assert (out / "first" / "v").read_text() == "changed" and (out / "third" / "v").read_text() == "c"


def test_tokenizer_folder_whose_name_looks_like_a_model_type_is_a_usage_error(tmp_path):
    """transformers guesses a model type from the path ('failed' contains 'led') and raises
    ImportError for an empty folder; that is a wrong path, not a crash."""
    folder = tmp_path / "failed_run"
    folder.mkdir()
    with pytest.raises(errors.UsageError, match="cannot load a tokenizer from"):
        loading.load_tokenizer(folder)
