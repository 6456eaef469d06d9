"""The paper's experiment in miniature, in one command (`make demo`).

Runs, through the same commands a user types (settings in conf/demo.yaml, `key=value` overrides):
  0. python -m tiny_world               build the tiny world (skipped when current); a variant
                                                      recipe into its own folder, which every later step reads
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
`python demo.py experiment=transfer`: the same pipeline on other base models with the default
demo's weight models (run_transfer; docs/transfer.md).
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from plumbing import checks, errors, files, loading, schemas  # noqa: F401 - schemas: demo_schema and the resolvers
from plumbing.environment import REPO_ROOT
from plumbing.errors import UsageError


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
                print(
                    f"[demo] {name}: "
                    + ("its options changed" if recorded != command else "an earlier step was recomputed")
                    + "; recomputing it",
                    flush=True,
                )
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
            raise UsageError(
                f"step {failures[0]} failed; fix the error above and rerun the demo, which resumes "
                "from the unfinished steps"
            )

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
        files.atomic_write_text(json.dumps(command), self.started / name)
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
            files.atomic_write_text(json.dumps(self.timings, indent=1), self.timings_path)
            files.atomic_write_text(json.dumps(command), self.done / name)
        if quiet:
            print(f"[demo] {name}: finished in {seconds:.0f}s", flush=True)
        return None


def eval_sweeps(pipeline, cfg, phase, lrs, seeds, downsample_to, folder=None):
    """One Hydra multirun per method of `lrs` (method -> its lrs) × seeds on the `phase` split, as
    named commands; each into OUT/<phase>/<method>[/<folder>]."""
    return {
        f"{phase}_{method}" + (f"_{folder}" if folder else ""): (
            [
                "run.py",
                "-m",
                "task=eval",
                f"dataset={cfg.dataset}",
                *cfg.world_overrides,
                f"split={phase}",
                f"base_model={cfg.base_model}",
                f"lr={','.join(str(lr) for lr in method_lrs)}",
                f"seed={','.join(str(s) for s in seeds)}",
                f"downsample_to={downsample_to}",
                *pipeline.thread_overrides,
                *cfg.all_methods[method],
                *cfg.eval_overrides,
                f"hydra.sweep.dir={pipeline.out / phase / method / (folder or '')}",
            ],
            pipeline.out / phase / method / (folder or ""),
        )
        for method, method_lrs in lrs.items()
    }


def grid_ratio(lrs):
    """The factor between neighbouring values of a log-spaced grid (such as 3e-4, 1e-3, 3e-3: the
    neighbour ratios may differ by up to a factor 1.25), checked."""
    lrs = sorted(float(lr) for lr in lrs)
    if len(lrs) < 2 or lrs[0] <= 0:
        raise UsageError(f"lrs={lrs} must hold at least two positive learning rates")
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    if max(ratios) / min(ratios) > 1.25 or min(ratios) <= 1:
        raise UsageError(
            f"lrs={lrs} is not log-spaced (neighbour ratios {[round(r, 3) for r in ratios]}); "
            "give a grid such as [3e-4, 1e-3, 3e-3]"
        )
    return (lrs[-1] / lrs[0]) ** (1 / (len(lrs) - 1))


def validation_table(cfg, pipeline, methods):
    import report

    return report.aggregate([pipeline.out / "val" / m for m in methods], metric=cfg.selection_metric)


def lr_beyond_edge(cfg, pipeline, method, extension):
    """When `method`'s best validation lr, among the runs made before extension round `extension`,
    is the smallest or largest of them, the next value of the log-spaced grid beyond that edge; else
    None. (A rerun recomputes the same value: later rounds' runs are left out.)"""
    import report

    folder = pipeline.out / "val" / method
    later = {f"beyond_edge_{k}" for k in range(extension, cfg.max_lr_extensions + 1)}
    runs = [r for r in report.load_runs([folder]) if Path(r["run_dir"]).relative_to(folder).parts[0] not in later]
    table = report.aggregate_runs(runs, metric=cfg.selection_metric)
    best = report.best_lrs(table, metric=cfg.selection_metric).iloc[0]["lr"]  # ties: the smaller lr
    return report.lr_beyond_edge(best, table["lr"], grid_ratio(cfg.lrs))


def validation_sweeps(pipeline, cfg, methods, alongside=None):
    """Every method of `methods` over the lr grid on the validation stream (next to the steps of
    `alongside`); then, while a method's best lr is at an edge of what it was run with, one more
    run beyond that edge (at most `max_lr_extensions` per method). Selection reads validation only."""
    grid = {m: [cfg.lrs[0]] if m in cfg.unswept_methods else cfg.lrs for m in methods}
    pipeline.steps(
        {**eval_sweeps(pipeline, cfg, "val", grid, [cfg.val_seed], cfg.val_downsample_to), **(alongside or {})}
    )
    swept = [m for m in methods if m not in cfg.unswept_methods]
    for extension in range(1, cfg.max_lr_extensions + 1):
        beyond = {m: [lr] for m in swept if (lr := lr_beyond_edge(cfg, pipeline, m, extension)) is not None}
        if not beyond:
            return
        pipeline.steps(
            eval_sweeps(
                pipeline, cfg, "val", beyond, [cfg.val_seed], cfg.val_downsample_to, folder=f"beyond_edge_{extension}"
            )
        )


def best_lrs(cfg, pipeline, methods):
    """Each of `methods` -> [its lr with the best validation `selection_metric`]."""
    import report

    if not methods:
        return {}
    best = report.best_lrs(validation_table(cfg, pipeline, methods), metric=cfg.selection_metric)
    best = best.set_index("method")["lr"]
    return {m: [best[m]] for m in methods}


def world_overrides(cfg):
    """The world's folder (its own for a variant recipe), and the options that point every later
    step at its files."""
    import tiny_world

    root = tiny_world.output_root(tiny_world.load_recipe(list(cfg.tiny_world_overrides)))
    return root, [f"dataset.data_dir={root / 'data'}"]


def method_table(cfg, pipeline):
    """Every method's run.py overrides: those of `methods`, each meta-trained one (CaMeLS) once per
    meta-training seed as <name>_seed<k> with that seed's weight model, and once per entry of
    `weight_models` (label -> a weight model made elsewhere) under that label."""
    methods = {}
    for name, overrides in cfg.methods.items():
        if name not in cfg.meta_trained_methods:
            methods[name] = list(overrides)
            continue
        checkpoints = {
            f"{name}_seed{seed}": pipeline.out / "meta_train" / f"seed{seed}" / "checkpoints" / cfg.weight_checkpoint
            for seed in cfg.meta_train_seeds
        }
        for label, checkpoint in {**cfg.weight_models, **checkpoints}.items():
            methods[label] = [*overrides, f"weight_model_path={checkpoint}", f"method_label={label}"]
    return methods


def qa_tuned_base(cfg, pipeline, world_root):
    """Steps 0 and 1: the world, and QA tuning of `base_model_source` (null: the world's base model)
    into OUT/qa_tune; records the QA-tuned checkpoint as cfg.base_model. Returns the QA-tuning folder."""
    qa_dir = pipeline.out / "qa_tune"
    source = cfg.base_model_source or world_root / "base_model"
    pipeline.step("tiny_world", ["-m", "tiny_world", *cfg.tiny_world_overrides, f"out_dir={world_root}"])
    pipeline.step(
        "qa_tune",
        [
            "train_qa.py",
            f"dataset={cfg.dataset}",
            f"model={source}",
            *cfg.world_overrides,
            *cfg.qa_tune_overrides,
            f"hydra.run.dir={qa_dir}",
        ],
        qa_dir,
    )
    return qa_dir


def run_demo(cfg):
    """Every step of the demo as `cfg` (conf/demo.yaml's keys) describes; returns the report folder.
    With `transfer.bases` set, the transfer experiment instead (run_transfer)."""
    if cfg.transfer.bases:
        return run_transfer(cfg)
    pipeline = Pipeline(cfg.out_dir, cfg.parallel_jobs)
    cfg.base_model = str(pipeline.out / "qa_tune" / "checkpoints" / cfg.qa_checkpoint)
    world_root, cfg.world_overrides = world_overrides(cfg)
    cfg.all_methods = method_table(cfg, pipeline)
    check_demo_config(cfg, world_root)
    started = time.time()
    environment = record_environment(pipeline)

    qa_dir = qa_tuned_base(cfg, pipeline, world_root)

    # meta-training (once per seed) runs side by side with the validation sweeps of the methods
    # that do not need it, then the meta-trained methods' sweeps beside the others' test runs
    learned = [m for m in cfg.all_methods if m not in cfg.methods or m in cfg.meta_trained_methods]
    fixed = [m for m in cfg.all_methods if m not in learned]
    meta_training = {
        f"meta_train_seed{seed}": (
            meta_train_command(cfg, world_root, seed, pipeline.thread_overrides, pipeline.out),
            pipeline.out / "meta_train" / f"seed{seed}",
        )
        for seed in cfg.meta_train_seeds
    }
    validation_sweeps(pipeline, cfg, fixed, alongside=meta_training)
    validation_sweeps(
        pipeline,
        cfg,
        learned,
        alongside=eval_sweeps(
            pipeline, cfg, "test", best_lrs(cfg, pipeline, fixed), cfg.test_seeds, cfg.test_downsample_to
        ),
    )
    pipeline.steps(
        eval_sweeps(pipeline, cfg, "test", best_lrs(cfg, pipeline, learned), cfg.test_seeds, cfg.test_downsample_to)
    )

    report_dir = pipeline.out / "report"
    pipeline.step(
        "report",
        [
            "report.py",
            str(pipeline.out / "test"),
            "--select-from",
            str(pipeline.out / "val"),
            "--metric",
            cfg.selection_metric,
            "--out",
            str(report_dir),
            "--baselines",
            ",".join(cfg.baselines),
            "--bootstrap",
            str(cfg.bootstrap_resamples),
        ],
        report_dir,
    )
    files.atomic_write_text(json.dumps(environment, indent=1) + "\n", report_dir / "environment.json")
    describe_weightings(cfg, report_dir)
    minutes = (time.time() - started) / 60
    closing = closing_sentences(cfg, pipeline, report_dir, world_root, qa_dir)
    files.atomic_write_text(closing + "\n", report_dir / "summary.md")
    print(
        f"\n[demo] finished in {minutes:.1f} min (step times in {pipeline.timings_path}); table, chart and "
        f"weight heat-maps in {report_dir}\n\n{closing}"
    )
    return report_dir


def run_transfer(cfg):
    """The transfer experiment (docs/transfer.md): CaMeLS weight models meta-trained with the world's
    base model (the proxy: the demo of `transfer.proxy_demo_dir`, whose QA tuning and meta-training
    are reused, or run there when missing) weigh the documents of each transfer base (the targets,
    python -m tiny_world.transfer_bases), each QA-tuned and evaluated with every method as the demo
    does, into OUT/<base>/ with its own report; a base of `transfer.target_meta_train` also gets
    weight models meta-trained with itself (CaMeLS_seed<k>) beside the proxy's (CaMeLS_proxy_seed<k>).
    Returns the output folder."""
    import copy

    from tiny_world import transfer_bases

    out = Path(cfg.out_dir).resolve()
    world_root, cfg.world_overrides = world_overrides(cfg)
    names = list(cfg.transfer.bases)
    proxy_cfg = copy.deepcopy(cfg)
    proxy_cfg.out_dir, proxy_cfg.base_model_source, proxy_cfg.weight_models = cfg.transfer.proxy_demo_dir, None, {}
    proxy = Pipeline(proxy_cfg.out_dir, cfg.parallel_jobs)
    proxy_cfg.base_model = str(proxy.out / "qa_tune" / "checkpoints" / cfg.qa_checkpoint)
    proxy_cfg.all_methods = method_table(proxy_cfg, proxy)
    check_demo_config(proxy_cfg, world_root)
    started = time.time()

    # the proxy: the demo's own steps, with its commands, so that each demo reuses the other's
    qa_tuned_base(proxy_cfg, proxy, world_root)
    proxy.steps(
        {
            f"meta_train_seed{seed}": (
                meta_train_command(proxy_cfg, world_root, seed, proxy.thread_overrides, proxy.out),
                proxy.out / "meta_train" / f"seed{seed}",
            )
            for seed in cfg.meta_train_seeds
        }
    )
    proxy_models = {
        f"{name}_proxy_seed{seed}": str(
            proxy.out / "meta_train" / f"seed{seed}" / "checkpoints" / cfg.weight_checkpoint
        )
        for name in cfg.meta_trained_methods
        for seed in cfg.meta_train_seeds
    }

    world = [f"'{override}'" for override in [*cfg.tiny_world_overrides, f"out_dir={world_root}"]]
    Pipeline(out, cfg.parallel_jobs).step(
        "transfer_bases",
        ["-m", "tiny_world.transfer_bases", f"world_overrides=[{','.join(world)}]", f"build=[{','.join(names)}]"],
    )
    reports = {}
    for name, folder in transfer_bases.base_folders(world_root, names).items():
        print(f"\n[demo] transfer base {name}: {folder}", flush=True)
        base_cfg = copy.deepcopy(cfg)
        base_cfg.transfer.bases, base_cfg.transfer.target_meta_train = [], []
        base_cfg.out_dir, base_cfg.base_model_source = str(out / name), str(folder)
        base_cfg.weight_models = proxy_models
        base_cfg.meta_train_seeds = list(
            cfg.transfer.target_meta_train_seeds if name in cfg.transfer.target_meta_train else []
        )
        reports[name] = run_demo(base_cfg)
    lines = [
        f"Transfer experiment: weight models meta-trained with the world's base model ({proxy.out}), used on "
        f"other base models; {(time.time() - started) / 60:.1f} min."
    ]
    for name, report_dir in reports.items():
        lines += [
            "",
            f"## {name}",
            "",
            (report_dir / "results.md").read_text().strip(),
            "",
            (report_dir / "summary.md").read_text().strip(),
        ]
    files.atomic_write_text("\n".join(lines) + "\n", out / "summary.md")
    print(f"\n[demo] transfer experiment: tables of every base in {out / 'summary.md'}")
    return out


def meta_train_command(cfg, world_root, seed, thread_overrides, out):
    return [
        "run.py",
        "task=train",
        "model=CaMeLS",
        f"dataset={cfg.dataset}",
        *cfg.world_overrides,
        f"model.pretrained_model={world_root / 'base_model'}",
        f"base_model={cfg.base_model}",
        f"seed={seed}",
        *thread_overrides,
        *cfg.meta_train_overrides,
        f"hydra.run.dir={out / 'meta_train' / f'seed{seed}'}",
    ]


def check_demo_config(cfg, world_root):
    """Every option of the demo and of the commands it will run, checked before any work."""
    import demo_checks

    seed = cfg.meta_train_seeds[0] if cfg.meta_train_seeds else 0
    demo_checks.check(cfg, meta_train_command(cfg, world_root, seed, [], Path(cfg.out_dir))[1:-1])
    grid_ratio(cfg.lrs)


def record_environment(pipeline):
    """What the numbers may depend on: versions, CPU, threads; written beside the results."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import transformers

    environment = dict(
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        cpu=cpu,
        cpu_count=os.cpu_count(),
        torch_threads_per_step=1 if pipeline.thread_overrides else torch.get_num_threads(),
        parallel_jobs=pipeline.parallel_jobs,
        cuda=torch.cuda.is_available(),
    )
    pipeline.out.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(json.dumps(environment, indent=1) + "\n", pipeline.out / "environment.json")
    return environment


def closing_sentences(cfg, pipeline, report_dir, world_root, qa_dir):
    """The demo's conclusion, computed from its outputs: every method's paired difference to the
    best baseline with its intervals, the floor and ceiling, and what QA pre-tuning did."""
    import pandas as pd

    best = pd.read_csv(report_dir / "best.csv").set_index("method")
    lines = []
    paired_path = report_dir / "paired.csv"
    paired = pd.read_csv(paired_path) if paired_path.is_file() and paired_path.stat().st_size > 1 else pd.DataFrame()
    label = "EM" if cfg.selection_metric == "em" else "F1"
    for _, row in paired.iterrows():
        if row["method"] in cfg.baselines:
            continue
        lines.append(
            f"{row['method']} − {row['baseline']} (the best baseline): {100 * row['difference']:+.1f} test "
            f"{label} points, 95% interval [{100 * row['ci_questions_low']:+.1f}, "
            f"{100 * row['ci_questions_high']:+.1f}] over questions and [{100 * row['ci_streams_low']:+.1f}, "
            f"{100 * row['ci_streams_high']:+.1f}] over streams and questions "
            f"({row['n_streams']} streams, {row['n_questions']} questions)."
        )
    key = "em_fraction_mean" if label == "EM" else "f1_fraction_mean"
    for name, role in (("none", "floor (no adaptation)"), ("oracle", "ceiling (answer tokens only)")):
        if name in best.index:
            lines.append(f"The {role}: test {label} {100 * best.loc[name, key]:.1f}.")
    history = qa_dir / "metrics.jsonl"
    if history.is_file():
        rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        if rows:
            top, low = max(rows, key=lambda r: r["val_f1"]), min(rows, key=lambda r: r["val_nll"])
            lines.append(
                f"QA pre-tuning: validation F1 {100 * rows[0]['val_f1']:.1f} before, "
                f"{100 * top['val_f1']:.1f} at its best (step {top['step']}); answer NLL "
                f"{rows[0]['val_nll']:.3f} before, {low['val_nll']:.3f} at its lowest (step {low['step']}); "
                f"the demo adapts its {cfg.qa_checkpoint} checkpoint."
            )
    lines.append(f"Tiny world: {world_root} (sanity report {world_root / 'report.md'}).")
    return "\n".join(lines)


def describe_weightings(cfg, report_dir):
    """Each weighting, built exactly as run.py task=eval builds it, on the first test stream: the
    share of its weight that lands on answer tokens (answer_mass.md) and heat-maps of a few
    documents with the answers to their questions marked (weights_<name>.html/.png)."""
    import pandas as pd
    from hydra import compose, initialize_config_dir

    import evaluation
    from exp_datasets import QACollator, load_split, make_stream
    from exp_datasets.answer_spans import document_batch
    from weight_analysis import answer_mass, render_document_weights
    from weight_model import WEIGHT_MODELS

    tokenizer = loading.load_tokenizer(cfg.base_model)
    base_model = loading.load_causal_lm(cfg.base_model)  # what weightings read from the adapted model weigh for
    lines = ["| weighting | weight on answer tokens | answer tokens |", "|---|---|---|"]
    shares = []
    drawn = set()
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base=None):
        for overrides in cfg.all_methods.values():
            run_cfg = compose(
                "config",
                overrides=[
                    "task=eval",
                    f"dataset={cfg.dataset}",
                    *cfg.world_overrides,
                    f"base_model={cfg.base_model}",
                    *overrides,
                    *cfg.eval_overrides,
                ],
            )
            name = run_cfg.method_label or run_cfg.model.name
            if not WEIGHT_MODELS[run_cfg.model.name].adapts:
                continue
            if name in drawn:
                continue
            drawn.add(name)
            stream = make_stream(load_split(run_cfg.dataset, "test"), cfg.test_downsample_to, cfg.test_seeds[0])
            weight_model = evaluation.load_weight_model_for_eval(run_cfg, tokenizer, stream, base_model)
            collator = QACollator.from_config(tokenizer, run_cfg.dataset)

            def weigh(batch, weight_model=weight_model):
                return weight_model(batch["text_ids"], batch["text_mask"])

            totals = [0.0, 0.0, 0, 0]
            for start in range(0, len(stream), 16):
                batch = document_batch(collator, [d.examples for d in stream[start : start + 16]], "cpu")
                with torch.no_grad():
                    mass = answer_mass(weigh(batch), batch)
                totals = [t + m for t, m in zip(totals, mass or (0.0, 0.0, 0, 0))]
            if totals[1] and totals[3]:
                weight_share, token_share = totals[0] / totals[1], totals[2] / totals[3]
                lines.append(f"| {name} | {100 * weight_share:.1f}% | {100 * token_share:.1f}% |")
                shares.append(dict(weighting=name, answer_weight_share=weight_share, answer_token_share=token_share))
            render_document_weights(
                tokenizer,
                collator,
                [d.examples for d in stream[: cfg.heatmap_documents]],
                weigh,
                "cpu",
                report_dir / f"weights_{name}",
                heading=f"{name} weights on test documents",
            )
    text = (
        f"Share of each weighting's total weight on the answer tokens of the {len(stream)} documents of "
        f"the first test stream (seed {cfg.test_seeds[0]}), beside those tokens' share of all tokens.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    files.atomic_write_text(text, report_dir / "answer_mass.md")
    # the same shares as fractions, for worlds.py pool
    files.atomic_write_text(pd.DataFrame(shares).to_csv(index=False), report_dir / "answer_mass.csv")
    print("\n" + text, flush=True)


@hydra.main(version_base=None, config_path="conf", config_name="demo")
def main(cfg: DictConfig):
    from hydra.core.global_hydra import GlobalHydra

    # the demo composes the configurations of the commands it runs (checked before the first step)
    GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, False)  # run_demo records what it derives (base_model, world_overrides) in cfg
    with errors.usage_errors_exit():
        run_demo(cfg)


if __name__ == "__main__":
    sys.argv[1:] = checks.quoted_list_overrides(sys.argv[1:])
    errors.run_cli(main)
