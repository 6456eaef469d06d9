"""Running at scale: sweeps through Hydra's joblib and submitit launchers (parallel jobs, a failed
job leaving the others alone, a resubmitted sweep skipping finished jobs, report.py reading the
sweep), the SLURM preset, and data-parallel meta-training under torchrun (2 gloo ranks equal one
process; rank 0 alone writes; resuming keeps each rank's carried base model)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import ONE_THREAD_ENV, REPO, compose, run_script, train_world_overrides, world_overrides

import meta_train
import report
from plumbing.errors import UsageError


def eval_overrides(world):
    return [*world_overrides(world), "progress=false", "torch_threads=1"]


def run_cli(args, cwd=REPO, timeout=300):
    return run_script("run.py", *args, cwd=cwd, timeout=timeout, env=ONE_THREAD_ENV)


def sweep(world, sweep_dir, launcher, lrs):
    return run_cli(
        [
            "-m",
            *launcher,
            "task=eval",
            "model=uniform",
            "downsample_to=2",
            f"lr={lrs}",
            f"hydra.sweep.dir={sweep_dir}",
            *eval_overrides(world),
        ]
    )


def job_summaries(sweep_dir):
    return sorted(Path(sweep_dir).rglob("summary.json"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["hydra/launcher=submitit_local"]],
    ids=["joblib", "submitit_local"],
)
def test_parallel_sweep_writes_one_summary_per_job_and_report_reads_them(tiny_world_small, tmp_path, launcher):
    result = sweep(tiny_world_small, tmp_path / "sweep", launcher, "1e-4,3e-4")
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = job_summaries(tmp_path / "sweep")
    assert [p.parent.parent.name for p in summaries] == [
        "uniform-test-lr0.0001-ds2-seed42",
        "uniform-test-lr0.0003-ds2-seed42",
    ]
    if launcher[0].endswith("joblib"):
        assert "Joblib.Parallel(n_jobs=2," in result.stdout + result.stderr
    else:
        assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))) == 2, (
            "each job went through submitit"
        )
    table = report.aggregate([tmp_path / "sweep"], metric="f1")
    assert sorted(table["lr"]) == [1e-4, 3e-4] and set(table["method"]) == {"uniform"}
    assert all(table["n_seeds"] == 1)


@pytest.mark.slow
def test_failed_joblib_job_leaves_the_others_and_a_resubmitted_sweep_finds_finished_jobs(tiny_world_small, tmp_path):
    """Under joblib (jobs in worker processes) a job failing at run time leaves its sibling running,
    and the same sweep submitted again finds the finished job complete."""
    world, no_data = tiny_world_small, tmp_path / "no_data"
    no_data.mkdir()
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    command = [
        "-m",
        *launcher,
        "task=eval",
        "model=uniform",
        "downsample_to=2",
        "lr=1e-4",
        f"base_model={world.base_model}",
        f"dataset.data_dir={world.data_dir},{no_data}",
        "progress=false",
        "torch_threads=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]
    first = run_cli(command)
    assert first.returncode == 2
    assert first.stderr.strip().splitlines()[-1].startswith("error: 1 sweep job(s) failed, the others ran; 1: ")
    assert (tmp_path / "sweep" / "1" / "error.txt").is_file()
    finished = tmp_path / "sweep" / "0" / "summary.json"
    assert json.loads(finished.read_text())["n_documents"] == 2, "the failing job 1 did not stop job 0"

    stamp = finished.stat().st_mtime_ns
    again = run_cli(command)
    assert again.returncode == 2 and finished.stat().st_mtime_ns == stamp
    assert "already complete; nothing to do" in (tmp_path / "sweep" / "0" / "run.log").read_text()


def test_slurm_preset_asks_for_one_gpu_and_takes_cluster_options():
    cfg = compose(
        "conf",
        ["hydra/launcher=slurm_gpu", "hydra.launcher.partition=a100", "hydra.launcher.mem_gb=32"],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.partition, launcher.mem_gb) == (1, "a100", 32)
    assert launcher.timeout_min > 0 and launcher.cpus_per_task > 0


# ---------------------------------------------------------------------------------------------
# Data-parallel meta-training


TRAIN_KNOBS = [
    "val_batches=1",
    "sample_docs=1",
    "update_batch_size=2",
    "grad_acc_steps=4",
    "inner_lr=1.0",
    "outer_lr=3e-3",
    "torch_threads=1",
    "progress=false",
]


def train_overrides(world, *extra):
    """The command line of run.py task=train on the small world."""
    return ["task=train", "model=CaMeLS", *train_world_overrides(world), *TRAIN_KNOBS, *extra]


def torchrun(args, cwd, timeout=400):
    return run_script(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "run.py"),
        *args,
        cwd=cwd,
        timeout=timeout,
        env=ONE_THREAD_ENV,
    )


def single_process(world, out_dir, *extra):
    """The same run in this process, without torchrun."""
    return meta_train.train(compose("conf", [*train_overrides(world, *extra), f"output_dir={out_dir}", "device=cpu"]))


def metric_rows(run_dir):
    timing = ("step_s", "elapsed_s")
    return [
        {k: v for k, v in json.loads(line).items() if k not in timing}
        for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    ]


def weights(run_dir, name="last"):
    from weight_model import load_weight_model

    return load_weight_model(Path(run_dir) / "checkpoints" / name).state_dict()


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_only_rank_0_writes(tiny_world_small, tmp_path):
    """reset_base_freq = 2 batches = each rank's block of grad_acc_steps/2 batches: every rank's
    carried base model is then the single process's, so the outer steps must agree up to the order
    of summation of the gradients (float64, so that Adam's first steps, which divide the gradient
    by its own size, do not magnify float32 rounding)."""
    knobs = ["max_outer_steps=2", "reset_base_freq=4", "val_steps=2", "sample_steps=2", "dtype=float64"]
    single_process(tiny_world_small, tmp_path / "single", *knobs)
    result = torchrun(train_overrides(tiny_world_small, *knobs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    # rank 0 picked the Hydra run folder (under the working directory); rank 1 made none of its own
    [run_dir] = [p.parent for p in tmp_path.glob("outputs/train/**/metrics.jsonl")]
    assert len(list((tmp_path / "outputs" / "train").rglob(".hydra"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "single" / "checkpoints").iterdir()
    )
    assert result.stdout.count("meta-training: 2 outer steps") == 1

    parallel, single = metric_rows(run_dir), metric_rows(tmp_path / "single")
    assert [(r["split"], r["step"]) for r in parallel] == [("val", 0), ("train", 1), ("train", 2), ("val", 2)]
    assert [(r["split"], r["step"]) for r in parallel] == [(r["split"], r["step"]) for r in single]
    for a, b in zip(parallel, single):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == (pytest.approx(b[key], rel=1e-6, abs=1e-8) if isinstance(b[key], float) else b[key])
    a, b = weights(run_dir), weights(tmp_path / "single")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-10
    assert parallel[-1]["total"] != parallel[0]["total"], "the two outer steps moved the weight model"


@pytest.mark.slow
def test_two_rank_run_resumes_exactly(tiny_world_small, tmp_path):
    """reset_base_freq spans several steps, so each rank carries its own base model across steps;
    a resumed run must restore each rank's and end where the uninterrupted run ends."""
    knobs = ["reset_base_freq=8", "val_steps=1", "sample_steps=100", "n_epochs=5"]
    whole = torchrun(
        train_overrides(tiny_world_small, "max_outer_steps=3", f"output_dir={tmp_path / 'whole'}", *knobs), cwd=tmp_path
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    part = torchrun(
        train_overrides(tiny_world_small, "max_outer_steps=1", f"output_dir={tmp_path / 'part'}", *knobs), cwd=tmp_path
    )
    assert part.returncode == 0, part.stderr[-3000:]
    state = torch.load(tmp_path / "part" / "checkpoints" / "last" / meta_train.RESUME_FILE, weights_only=True)
    assert len(state["ranks"]) == 2
    assert not all(torch.equal(a, b) for a, b in zip(*(r["base_params"] for r in state["ranks"]))), (
        "the ranks carry different base models"
    )
    resumed = torchrun(
        train_overrides(tiny_world_small, "max_outer_steps=3", f"resume_from={tmp_path / 'part'}", *knobs), cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metric_rows(tmp_path / "part") == metric_rows(tmp_path / "whole")
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)

    single = run_cli(
        train_overrides(tiny_world_small, "max_outer_steps=4", f"resume_from={tmp_path / 'part'}", *knobs), cwd=tmp_path
    )
    assert single.returncode == 2
    assert "was trained by 2 process(es)" in single.stderr.strip().splitlines()[-1]


def test_grad_acc_steps_must_split_evenly_over_ranks(tiny_world_small, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = compose("conf", [*train_overrides(tiny_world_small, "grad_acc_steps=3"), f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(UsageError, match="grad_acc_steps=3 must be divisible by the number of torchrun ranks"):
        meta_train.train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_evaluation_refuses_torchrun(tiny_world_small, tmp_path):
    result = run_script(
        "run.py",
        "task=eval",
        *eval_overrides(tiny_world_small),
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env=dict(ONE_THREAD_ENV, WORLD_SIZE="2", RANK="0"),
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: task=eval runs in one process; start it with python, not torchrun"
    ]


# ---------------------------------------------------------------------------------------------
# Big base models in evaluation: bf16 weights, a light optimizer, gradient checkpointing


def eval_config(world, *overrides):
    return compose(
        "conf",
        [
            "task=eval",
            "model=uniform",
            *world_overrides(world),
            "device=cpu",
            "progress=false",
            "max_new_tokens=4",
            "eval=[em,ppl]",
            "eval_init=true",
            "downsample_to=4",
            "torch_threads=1",
            *overrides,
        ],
    )


@pytest.mark.parametrize("optimizer", ["adafactor", "adam8bit"])
def test_bf16_adaptation_with_a_light_optimizer_and_checkpointing_learns(tiny_world_small, tmp_path, optimizer):
    import evaluation

    if optimizer == "adam8bit":
        pytest.importorskip("bitsandbytes")
    cfg = eval_config(
        tiny_world_small, "dtype=bfloat16", f"optimizer={optimizer}", "grad_checkpointing=true", "lr=3e-3"
    )
    summary = evaluation.evaluate(cfg, tmp_path)
    assert summary["optimizer"] == optimizer
    assert summary["nll"] < summary["init"]["nll"] - 0.05, "adapting on the documents lowers their answers' NLL"


def test_adam8bit_without_bitsandbytes_fails_before_work(tiny_world_small, tmp_path, monkeypatch):
    import importlib.util

    import evaluation

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    cfg = eval_config(tiny_world_small, "optimizer=adam8bit")
    with pytest.raises(UsageError, match="optimizer=adam8bit needs the bitsandbytes package; pip install"):
        evaluation.evaluate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
