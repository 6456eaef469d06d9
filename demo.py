"""The paper's experiment in miniature, in one command (`make demo`).

Runs, through the same commands a user types (settings in conf/demo.yaml, `key=value` overrides):
  0. python -m exp_datasets.tiny_world               build the tiny world (skipped when current)
  1. python train_qa.py                               QA-tune the tiny base model
  2. python run.py task=train model=CaMeLS            meta-train a CaMeLS weight model, while
  3. python run.py -m task=eval split=val lr=a,b,c    every method's learning-rate sweep (validation)
                                                      runs (CaMeLS's once its weight model is saved)
  4. python run.py -m task=eval split=test seed=...   each method at its best lr (test, several streams),
                                                      as soon as its validation sweep has finished
  5. python report.py OUT/test --select-from OUT/val  the method table and chart
  6. each weighting's share of weight on answer tokens, and heat-maps of a few test documents
Independent steps run `parallel_jobs` at a time, each on one CPU thread with its output in
OUT/logs/. A step that finished is not run again, so an interrupted demo resumes where it stopped;
a step whose command changed (e.g. other qa_tune_overrides) is recomputed, and so is every step
after it. All options, and the configuration of every command, are checked before the first step.
"""
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from omegaconf import OmegaConf

import configs  # noqa: F401 - the config's ${...} resolvers
import util
from util import REPO_ROOT, UsageError


class Pipeline:
    """Steps run in order, each once. A step records its command when it starts (OUT/.started/) and
    when it finishes (OUT/.done/); a rerun skips a finished step with the same command, and recomputes
    a step whose command changed, and every step after it, with its earlier output removed."""

    def __init__(self, out_dir, parallel_jobs=1):
        self.out = Path(out_dir).resolve()
        self.done = self.out / ".done"
        self.started = self.out / ".started"
        self.logs = self.out / "logs"
        self.parallel_jobs = max(1, int(parallel_jobs))
        self.timings_path = self.out / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        self._lock = threading.Lock()
        self.recomputing = False  # a step ran in this demo, so the steps after it are recomputed too
        # steps side by side share the CPU cores: one thread each
        self.thread_overrides = ["torch_threads=1"] if self.parallel_jobs > 1 else []

    def step(self, name, command, output=None):
        """Run `command` (arguments for the project's Python) with its output on the terminal,
        once: a step that finished before with the same command is skipped. `output`: the folder it
        writes, removed before the step is recomputed."""
        self.steps({name: (command, output)}, parallel=False)

    def steps(self, commands, parallel=True):
        """Run several independent steps (name -> (command, output folder)), `parallel_jobs` at a time;
        with more than one at a time each step's output goes to OUT/logs/<step>.log and the terminal
        gets one line per finished step."""
        todo = {}
        for name, (command, output) in commands.items():
            recorded = self.recorded(self.done / name)
            if recorded == command and not self.recomputing:
                print(f"[demo] {name}: done before, skipped", flush=True)
                continue
            if recorded is not None:
                print(f"[demo] {name}: " + ("its options changed" if recorded != command else "an earlier step was "
                      "recomputed") + "; recomputing it", flush=True)
            started = self.recorded(self.started / name)
            if output is not None and (recorded is not None or (started is not None and started != command)):
                shutil.rmtree(output, ignore_errors=True)  # the output of other options
            (self.done / name).unlink(missing_ok=True)
            todo[name] = command
        if not todo:
            return
        self.recomputing = True
        quiet = parallel and self.parallel_jobs > 1 and len(todo) > 1
        if quiet:
            self.logs.mkdir(parents=True, exist_ok=True)
            print(f"[demo] {len(todo)} steps, {self.parallel_jobs} at a time; their logs in {self.logs}", flush=True)
        with ThreadPoolExecutor(self.parallel_jobs if quiet else 1) as pool:
            failures = [f for f in pool.map(lambda item: self._run(*item, quiet), todo.items()) if f]
        if failures:
            raise UsageError(f"step {failures[0]} failed; fix the error above and rerun the demo, which resumes "
                             "from the unfinished steps")

    @staticmethod
    def recorded(marker):
        """The command recorded in a step marker; None without a marker, [] for one that recorded none."""
        if not marker.exists():
            return None
        text = marker.read_text()
        return json.loads(text) if text.strip() else []

    def _run(self, name, command, quiet):
        """One step; returns its name when it failed."""
        started = time.time()
        util.atomic_write_text(json.dumps(command), self.started / name)
        if quiet:
            log_path = self.logs / f"{name}.log"
            with open(log_path, "w") as log:
                result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        else:
            print(f"\n[demo] {name}: {' '.join(command)}", flush=True)
            result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT)
        seconds = round(time.time() - started, 1)
        if result.returncode != 0:
            if quiet:
                tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
                print(f"[demo] {name} failed (exit {result.returncode}); end of {log_path}:\n{tail}", flush=True)
            return name
        with self._lock:
            self.timings[name] = seconds
            util.atomic_write_text(json.dumps(self.timings, indent=1), self.timings_path)
            util.atomic_write_text(json.dumps(command), self.done / name)
        if quiet:
            print(f"[demo] {name}: finished in {seconds:.0f}s", flush=True)
        return None


def eval_sweeps(pipeline, cfg, phase, lrs, seeds, downsample_to):
    """One Hydra multirun per method of `lrs` (method -> its lrs) × seeds on the `phase` split, as named commands."""
    return {f"{phase}_{method}": ([
        "run.py", "-m", "task=eval", f"dataset={cfg.dataset}", f"split={phase}", f"base_model={cfg.base_model}",
        f"lr={','.join(str(lr) for lr in method_lrs)}", f"seed={','.join(str(s) for s in seeds)}",
        f"downsample_to={downsample_to}", *pipeline.thread_overrides, *cfg.methods[method], *cfg.eval_overrides,
        f"hydra.sweep.dir={pipeline.out / phase / method}",
    ], pipeline.out / phase / method) for method, method_lrs in lrs.items()}


def needs_weight_model(cfg, method):
    return any("weight_model_path" in str(option) for option in cfg.methods[method])


def best_lrs(cfg, pipeline, methods):
    """Each of `methods` -> [its lr with the best validation `selection_metric`]."""
    import report

    if not methods:
        return {}
    table = report.aggregate([pipeline.out / "val" / m for m in methods], metric=cfg.selection_metric)
    best = report.best_lrs(table, metric=cfg.selection_metric).set_index("method")["lr"]
    return {m: [best[m]] for m in methods}


def run_demo(cfg):
    """Every step of the demo as `cfg` (conf/demo.yaml's keys) describes; returns the report folder."""
    pipeline = Pipeline(cfg.out_dir, cfg.parallel_jobs)
    qa_dir, train_dir = pipeline.out / "qa_tune", pipeline.out / "meta_train"
    cfg.base_model = str(qa_dir / "checkpoints" / cfg.qa_checkpoint)
    cfg.weight_model_path = str(train_dir / "checkpoints" / cfg.weight_checkpoint)  # read by methods.CaMeLS
    check_demo_config(cfg)
    started = time.time()

    pipeline.step("tiny_world", ["-m", "exp_datasets.tiny_world", *cfg.tiny_world_overrides])
    pipeline.step("qa_tune", ["train_qa.py", f"dataset={cfg.dataset}", *cfg.qa_tune_overrides,
                              f"hydra.run.dir={qa_dir}"], qa_dir)

    # meta-training runs side by side with the validation sweeps of the methods that do not need it,
    # then CaMeLS's validation sweep beside their test runs, then CaMeLS's test runs
    learned = {m: cfg.lrs for m in cfg.methods if needs_weight_model(cfg, m)}
    fixed = {m: cfg.lrs for m in cfg.methods if m not in learned}
    pipeline.steps({
        "meta_train": (meta_train_command(cfg, pipeline.thread_overrides, train_dir), train_dir),
        **eval_sweeps(pipeline, cfg, "val", fixed, [cfg.val_seed], cfg.val_downsample_to)})
    pipeline.steps({**eval_sweeps(pipeline, cfg, "val", learned, [cfg.val_seed], cfg.val_downsample_to),
                    **eval_sweeps(pipeline, cfg, "test", best_lrs(cfg, pipeline, fixed), cfg.test_seeds,
                                  cfg.test_downsample_to)})
    pipeline.steps(eval_sweeps(pipeline, cfg, "test", best_lrs(cfg, pipeline, learned), cfg.test_seeds,
                               cfg.test_downsample_to))

    report_dir = pipeline.out / "report"
    pipeline.step("report", ["report.py", str(pipeline.out / "test"), "--select-from", str(pipeline.out / "val"),
                             "--metric", cfg.selection_metric, "--out", str(report_dir)], report_dir)
    describe_weightings(cfg, report_dir)

    minutes = (time.time() - started) / 60
    print(f"\n[demo] finished in {minutes:.1f} min (step times in {pipeline.timings_path}); "
          f"table, chart and weight heat-maps in {report_dir}")
    return report_dir


def meta_train_command(cfg, thread_overrides, train_dir):
    return ["run.py", "task=train", "model=CaMeLS", f"dataset={cfg.dataset}", f"base_model={cfg.base_model}",
            *thread_overrides, *cfg.meta_train_overrides, f"hydra.run.dir={train_dir}"]


def check_demo_config(cfg):
    """Every option of the demo and of the commands it will run, checked before any work."""
    import demo_checks

    demo_checks.check(cfg, meta_train_command(cfg, [], Path(cfg.out_dir) / "meta_train")[1:-1])


def describe_weightings(cfg, report_dir):
    """Each weighting, built exactly as run.py task=eval builds it, on the first test stream: the
    share of its weight that lands on answer tokens (answer_mass.md) and heat-maps of a few
    documents with the answers to their questions marked (weights_<name>.html/.png)."""
    from hydra import compose, initialize_config_dir

    import run
    from exp_datasets import QACollator, load_split, make_stream
    from weight_analysis import answer_mass, document_batch, render_document_weights

    tokenizer = util.load_tokenizer(cfg.base_model)
    lines = ["| weighting | weight on answer tokens | answer tokens |", "|---|---|---|"]
    drawn = set()
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base=None):
        for method, overrides in cfg.methods.items():
            run_cfg = compose("config", overrides=["task=eval", f"dataset={cfg.dataset}",
                                                    f"base_model={cfg.base_model}", *overrides,
                                                    *cfg.eval_overrides])
            name = run_cfg.model.name
            if name in drawn:
                continue
            drawn.add(name)
            stream = make_stream(load_split(run_cfg.dataset, "test"), cfg.test_downsample_to, cfg.test_seeds[0])
            weight_model = run.load_weight_model_for_eval(run_cfg, tokenizer, [d.text for d in stream])
            collator = QACollator.from_config(tokenizer, run_cfg.dataset)
            weigh = lambda batch: weight_model(batch["text_ids"], batch["text_mask"])  # noqa: E731
            totals = [0.0, 0.0, 0, 0]
            for start in range(0, len(stream), 16):
                batch = document_batch(collator, [d.examples for d in stream[start:start + 16]], "cpu")
                with torch.no_grad():
                    mass = answer_mass(weigh(batch), batch)
                totals = [t + m for t, m in zip(totals, mass or (0.0, 0.0, 0, 0))]
            if totals[1] and totals[3]:
                lines.append(f"| {name} | {100 * totals[0] / totals[1]:.1f}% | {100 * totals[2] / totals[3]:.1f}% |")
            render_document_weights(tokenizer, collator, [d.examples for d in stream[:cfg.heatmap_documents]],
                                    weigh, "cpu", report_dir / f"weights_{name}",
                                    heading=f"{name} weights on test documents")
    text = (f"Share of each weighting's total weight on the answer tokens of the {len(stream)} documents of "
            f"the first test stream (seed {cfg.test_seeds[0]}), beside those tokens' share of all tokens.\n\n"
            + "\n".join(lines) + "\n")
    util.atomic_write_text(text, report_dir / "answer_mass.md")
    print("\n" + text, flush=True)


def main(argv):
    defaults = OmegaConf.load(REPO_ROOT / "conf" / "demo.yaml")
    OmegaConf.set_struct(defaults, True)  # a mistyped option is an error, not silently unused
    try:
        if not all("=" in option for option in argv):
            raise ValueError("an option without =")
        cfg = OmegaConf.merge(defaults, OmegaConf.from_dotlist(argv))
    except Exception as err:  # noqa: BLE001 - OmegaConf raises several kinds for a bad key=value
        problem = str(err).splitlines()[0]
        raise UsageError(f"bad option in {' '.join(argv)} ({problem}); the demo takes key=value pairs "
                         "whose keys are those of conf/demo.yaml") from None
    OmegaConf.set_struct(cfg, False)
    run_demo(cfg)


if __name__ == "__main__":
    util.run_cli(lambda: main(sys.argv[1:]))
