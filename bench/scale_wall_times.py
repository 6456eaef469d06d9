"""Wall times of the two ways to scale out: a 4-job evaluation sweep with 1 vs N parallel joblib
jobs, and meta-training outer steps in 1 vs N torchrun ranks, each as the user runs it:

    python bench/scale_wall_times.py [--jobs 1 2] [--ranks 1 2] [--outer-steps 2] [OVERRIDE ...]
        [--train-overrides OVERRIDE ...]

The OVERRIDEs go to every command (e.g. dataset.data_dir=... base_model=... for another world),
--train-overrides to meta-training only (then model.pretrained_model=..., dataset.web_text_csv=...,
and n_epochs=... when an epoch has fewer batches than the outer steps need). Prints one
JSON line per run: the command's wall time and, for meta-training, fit()'s wall time (validations
included) and the mean seconds per outer step from metrics.jsonl. Timings on a shared machine swing:
compare runs of one invocation.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP_LRS = "1e-4,3e-4,1e-3,3e-3"


def timed(command):
    started = time.time()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return time.time() - started


def sweep(n_jobs, overrides, scratch):
    sweep_dir = scratch / f"sweep_{n_jobs}"
    wall = timed(
        [
            sys.executable,
            "run.py",
            "-m",
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={n_jobs}",
            "task=eval",
            "model=uniform",
            f"lr={SWEEP_LRS}",
            "progress=false",
            "torch_threads=1",
            f"hydra.sweep.dir={sweep_dir}",
            *overrides,
        ]
    )
    jobs = [json.loads(p.read_text())["wall_time_s"] for p in sorted(sweep_dir.glob("*/summary.json"))]
    return dict(
        bench="eval_sweep",
        n_jobs=n_jobs,
        n_runs=len(jobs),
        wall_s=round(wall, 1),
        job_wall_s=[round(s, 1) for s in jobs],
    )


def meta_train(n_ranks, outer_steps, overrides, scratch):
    out_dir = scratch / f"train_{n_ranks}"
    launcher = (
        [sys.executable]
        if n_ranks == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_ranks}"]
    )
    wall = timed(
        [
            *launcher,
            "run.py",
            "task=train",
            "model=CaMeLS",
            f"max_outer_steps={outer_steps}",
            "progress=false",
            "torch_threads=1",
            f"output_dir={out_dir}",
            f"hydra.run.dir={out_dir}",
            *overrides,
        ]
    )
    summary = json.loads((out_dir / "summary.json").read_text())
    steps = [
        json.loads(line)["step_s"]
        for line in (out_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "train"
    ]
    return dict(
        bench="meta_train",
        n_ranks=n_ranks,
        outer_steps=summary["steps"],
        wall_s=round(wall, 1),
        fit_wall_s=round(summary["wall_s"], 1),
        mean_step_s=round(sum(steps) / max(len(steps), 1), 2),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--ranks", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--outer-steps", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--train-overrides", nargs="*", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for n_jobs in args.jobs:
            print(json.dumps(sweep(n_jobs, args.overrides, Path(scratch))), flush=True)
        for n_ranks in args.ranks:
            print(
                json.dumps(meta_train(n_ranks, args.outer_steps, args.overrides + args.train_overrides, Path(scratch))),
                flush=True,
            )


if __name__ == "__main__":
    main()
