"""The paper's experiment in miniature, in one command (`make demo`).

Runs, through the same commands a user types (settings in conf/demo.yaml, `key=value` overrides):
  0. python -m exp_datasets.tiny_world               build the tiny world (skipped when current)
  1. python train_qa.py                               QA-tune the tiny base model
  2. python run.py task=train model=CaMeLS            meta-train a CaMeLS weight model
  3. python run.py -m task=eval split=val lr=a,b,c    every method's learning-rate sweep (validation)
  4. python run.py -m task=eval split=test seed=...   each method at its best lr (test, several streams)
  5. python report.py OUT/test --select-from OUT/val  the method table and chart
  6. weight heat-maps of a few test documents by every weighting
A step that finished is not run again, so an interrupted demo resumes where it stopped.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

import util
from util import REPO_ROOT, UsageError


class Pipeline:
    def __init__(self, out_dir):
        self.out = Path(out_dir).resolve()
        self.done = self.out / ".done"
        self.timings_path = self.out / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}

    def step(self, name, command):
        """Run `command` (a list of arguments for the project's Python) once; skip it if it finished before."""
        if (self.done / name).exists():
            print(f"[demo] {name}: done before, skipped", flush=True)
            return
        print(f"\n[demo] {name}: {' '.join(command)}", flush=True)
        start = time.time()
        result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT)
        if result.returncode != 0:
            raise UsageError(f"step {name} failed (exit {result.returncode}); fix the error above and rerun "
                             "the demo, which resumes from this step")
        self.timings[name] = round(time.time() - start, 1)
        util.atomic_write_text(json.dumps(self.timings, indent=1), self.timings_path)
        self.done.mkdir(parents=True, exist_ok=True)
        (self.done / name).touch()


def eval_sweep(pipeline, cfg, phase, method, overrides, lrs, seeds, downsample_to):
    sweep_dir = pipeline.out / phase / method
    pipeline.step(f"{phase}_{method}", [
        "run.py", "-m", "task=eval", f"dataset={cfg.dataset}", f"split={phase}", f"base_model={cfg.base_model}",
        f"lr={','.join(str(lr) for lr in lrs)}", f"seed={','.join(str(s) for s in seeds)}",
        f"downsample_to={downsample_to}", *overrides, *cfg.eval_overrides, f"hydra.sweep.dir={sweep_dir}",
    ])


def main(argv):
    util.register_resolvers()
    cfg = OmegaConf.merge(OmegaConf.load(REPO_ROOT / "conf" / "demo.yaml"), OmegaConf.from_dotlist(argv))
    pipeline = Pipeline(cfg.out_dir)
    started = time.time()

    pipeline.step("tiny_world", ["-m", "exp_datasets.tiny_world"])

    qa_dir = pipeline.out / "qa_tune"
    pipeline.step("qa_tune", ["train_qa.py", f"dataset={cfg.dataset}", *cfg.qa_tune_overrides,
                              f"hydra.run.dir={qa_dir}"])
    cfg.base_model = str(qa_dir / "checkpoints" / cfg.qa_checkpoint)

    train_dir = pipeline.out / "meta_train"
    pipeline.step("meta_train", ["run.py", "task=train", "model=CaMeLS", f"dataset={cfg.dataset}",
                                 f"base_model={cfg.base_model}", *cfg.meta_train_overrides,
                                 f"hydra.run.dir={train_dir}"])
    cfg.weight_model_path = str(train_dir / "checkpoints" / cfg.weight_checkpoint)  # read by methods.CaMeLS

    for method, overrides in cfg.methods.items():
        eval_sweep(pipeline, cfg, "val", method, overrides, cfg.lrs, [cfg.val_seed], cfg.val_downsample_to)

    import report

    validation = report.aggregate([pipeline.out / "val"], metric=cfg.selection_metric)
    best = report.best_lrs(validation, metric=cfg.selection_metric).set_index("method")["lr"]
    for method, overrides in cfg.methods.items():
        eval_sweep(pipeline, cfg, "test", method, overrides, [best[method]], cfg.test_seeds, cfg.test_downsample_to)

    report_dir = pipeline.out / "report"
    pipeline.step("report", ["report.py", str(pipeline.out / "test"), "--select-from", str(pipeline.out / "val"),
                             "--metric", cfg.selection_metric, "--out", str(report_dir)])
    render_heatmaps(cfg, report_dir)

    minutes = (time.time() - started) / 60
    print(f"\n[demo] finished in {minutes:.1f} min (step times in {pipeline.timings_path}); "
          f"table, chart and weight heat-maps in {report_dir}")


def render_heatmaps(cfg, report_dir):
    """Shade a few test documents by each weighting, built exactly as run.py task=eval builds it."""
    from hydra import compose, initialize_config_dir

    import run
    from exp_datasets import QACollator, load_split, make_stream
    from meta_train import render_weights

    run.register_run_resolvers()
    tokenizer = util.load_tokenizer(cfg.base_model)
    drawn = set()
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base=None):
        for method, overrides in cfg.methods.items():
            run_cfg = compose("config", overrides=["task=eval", f"dataset={cfg.dataset}",
                                                    f"base_model={cfg.base_model}", *overrides])
            if run_cfg.model.name in drawn:
                continue
            drawn.add(run_cfg.model.name)
            stream = make_stream(load_split(run_cfg.dataset, "test"), cfg.heatmap_documents, cfg.test_seeds[0])
            batch = QACollator.from_config(tokenizer, run_cfg.dataset)([d.examples[0] for d in stream])
            weight_model = run.load_weight_model_for_eval(run_cfg, tokenizer, batch["texts"])
            weights = weight_model(batch["text_ids"], batch["text_mask"]).detach()
            stem = report_dir / f"weights_{run_cfg.model.name}"
            render_weights(tokenizer, batch["text_ids"], weights, stem.with_suffix(".html"), stem.with_suffix(".png"),
                           attention_mask=batch["text_mask"])


if __name__ == "__main__":
    util.run_cli(lambda: main(sys.argv[1:]))
