"""Aggregate evaluation runs (`run.py task=eval`, single or multirun) into the paper-style table.

    python report.py PATH [PATH ...] [--out DIR] [--metric f1|em|nll] [--select-from DIR]

Every `summary.json` under the PATHs is one run. Runs are grouped by *setting*: every option the run
recorded in its run_options.json (the resolved configuration) except those in NOT_SETTING_OPTIONS
below (the seed, lr and method axes, and logging/hardware options that do not change a number).
Runs without run_options.json (older runs) fall back to the setting fields of their summary. One
table per setting, its title listing the options in which it differs from the other settings;
inside a setting, runs are grouped by (method, lr) and their seeds averaged (mean ± sample std,
ddof=1; blank for one seed). Two runs of one setting, method, lr and seed are refused (one would
count twice), as are runs of one method whose method options (model.*, weight_model_path, ...)
differ: give them distinct method_label=... or narrow the PATH.

Each method's best lr is the one with the highest mean --metric (lowest for nll); means within
TIE_TOLERANCE of the best tie, and a tie goes to the smaller lr. With `--select-from VAL_DIR` the
best lr is chosen on the runs under VAL_DIR (a validation sweep) and the numbers are reported from
the PATH runs (test), so the choice never looks at test; a test setting takes the validation runs
whose options equal its own except for STREAM_OPTIONS (split, stream size). A method without
validation runs, or without test runs at its chosen lr, keeps a row with a note.

Before naming a best lr the report checks the grid it was chosen on:
  - incomplete grid: a run folder holding run_options.json but no summary.json is unfinished; and
    in a Hydra multirun folder (one holding multirun.yaml) every method found there must have a
    finished run for each lr × seed its `lr=` and `seed=` overrides list. Each lr short of that is
    missing: a warning line per method lists them, and the best lr is marked "best of an
    incomplete grid".
  - edge: a best lr that is the smallest or largest of two or more lrs tried may hide the optimum:
    a warning line gives the command that runs the next lr beyond that edge (the grid's mean
    log-ratio, as demo.py extends its sweeps).

Outputs (in --out, default PATH/report for the first PATH, each file written atomically):
  results.md    full table (EM/F1 in %, one decimal; best lr in bold) + best-per-method table and
                notes; also printed
  results.csv   one row per setting × method × lr; EM/F1 as fractions in [0, 1] in columns named
                `*_fraction_mean` / `*_fraction_std`, NLL in nats; `best` marks the chosen lr
  best.csv      one row per setting × method at its chosen lr, with its grid, edge and notes
  settings.json each setting's label and full recorded options
  best_f1.png   bar chart of each method's F1 at its chosen lr, std over seeds as error bars

Library use (e.g. from a demo script):
    table = aggregate(["outputs/eval"], metric="f1")
    best = best_lrs(table, metric="f1", selection=aggregate(["outputs/val"], "f1"))
    write_report(table, best, "outputs/report", metric="f1")
"""

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from paired_stats import paired_table
from plumbing.errors import UsageError, run_cli
from plumbing.files import atomic_path, atomic_write_text, check_folder_path, read_json
from plumbing.run_folder import OPTIONS_FILE, RUNTIME_OPTIONS, differences
from plumbing.schemas import method_name
from report_tables import (  # noqa: F401
    HEADLINE_COLUMNS,
    METRIC_COLUMNS,
    VALUE_COLUMNS,
    lr_text,
    render_chart_png,
    render_markdown,
    render_paired,
    settings_json,
)

SUMMARY_NAME = "summary.json"
MULTIRUN_NAME = "multirun.yaml"
# Recorded options that are not part of a setting (a name covers the options below it, e.g. hydra.*):
NOT_SETTING_OPTIONS = (
    "seed",  # the replicate axis: averaged over
    "lr",  # a table axis
    "method_label",
    "model",
    "weight_model_path",
    "qa_lt_final",  # the method axis (see METHOD_OPTIONS)
    # how a run runs and logs: they do not change a number
    *RUNTIME_OPTIONS,
    "save_state_every",
    "eval_batch_size",
    "hydra",
)
# The options that make a method: all runs of one method (one table row label) in a setting must agree
METHOD_OPTIONS = ("method_label", "model", "weight_model_path", "qa_lt_final")
# Options in which a validation sweep and its test runs may differ (the stream and its size; the
# light-tuning and unrelated question counts follow downsample_to by default)
STREAM_OPTIONS = ("split", "test_path", "downsample_to", "lt_val_questions", "unrelated_questions")
# An older summary's setting fields, as the options they record
SUMMARY_SETTING_OPTIONS = {
    "dataset": "dataset.name",
    "split": "split",
    "base_model": "base_model",
    "downsample_to": "downsample_to",
    "optimizer": "optimizer",
    "n_epochs": "n_epochs",
    "decoding": "decoding",
}
# The options the headline columns (HEADLINE_COLUMNS) of every table title show
HEADLINE_OPTIONS = ("dataset.name", "split", "test_path", "base_model", "downsample_to", "optimizer", "n_epochs")
UNRECORDED = "<unrecorded>"
# Means closer than this (fractions, or nats for nll) are a tie, broken toward the smaller lr
TIE_TOLERANCE = 1e-9
# summary.json field (fraction in [0, 1]) -> the run's value column
FRACTION_FIELDS = {"em": "em_fraction", "f1": "f1_fraction", "max_f1": "max_f1_fraction"}
# The floor (no adaptation) first, the ceiling (oracle: answer tokens only) last
METHOD_ORDER = ["none", "uniform", "uniform+qa_tune", "ssm", "TFIDF", "surprisal", "excess_loss", "CaMeLS", "oracle"]
BASELINES = ("uniform", "uniform+qa_tune", "ssm", "TFIDF", "surprisal", "excess_loss")
METRICS = tuple(METRIC_COLUMNS)
# columns of the table that are kept in memory only (settings.json holds the options)
INTERNAL_COLUMNS = ["setting_key"]


def method_sort_key(method):
    """The floor, the paper's order (baselines, then CaMeLS and its variants such as CaMeLS_seed1),
    the ceiling, then any other method alphabetically."""
    if method in METHOD_ORDER:
        return (0, METHOD_ORDER.index(method), "")
    if method.startswith("CaMeLS"):
        return (0, METHOD_ORDER.index("CaMeLS"), method)
    return (1, 0, method)


# ---------------------------------------------------------------------------------------------
# Reading runs


def find_summaries(paths):
    """Every summary.json under `paths` (folders searched recursively), each file once."""
    found = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"{path} does not exist; give folders of run.py task=eval outputs")
        if path.is_file():
            if path.name != SUMMARY_NAME:
                raise UsageError(f"{path} is not a folder or a {SUMMARY_NAME}; give run folders")
            candidates = [path]
        else:
            candidates = path.rglob(SUMMARY_NAME)
        for candidate in candidates:
            found.setdefault(candidate.resolve(), candidate)
    return [found[key] for key in sorted(found)]


def _number(value, path, key, required):
    if value is None:
        if required:
            raise UsageError(f"{path} has no {key!r}; it is not a complete run.py eval summary")
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{path}: {key!r} is {value!r}, not a number; fix or remove that run") from None


def _fraction(value, path, key, required):
    number = _number(value, path, key, required)
    if not math.isnan(number) and not 0.0 <= number <= 1.0:
        raise UsageError(f"{path}: {key!r} is {value!r}, not a fraction in [0, 1]; fix or remove that run")
    return number


def _covered(name, prefixes):
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def split_options(options):
    """(setting options, method options) of a run's recorded options; the others are dropped."""
    setting = {k: v for k, v in options.items() if not _covered(k, NOT_SETTING_OPTIONS)}
    method = {k: v for k, v in options.items() if _covered(k, METHOD_OPTIONS)}
    return setting, method


def canonical(options):
    """One string per set of options (the grouping key)."""
    return json.dumps(options, sort_keys=True)


def recorded_options(run_dir, summary=None):
    """The run's recorded options (run_options.json); without it (older runs) the setting fields of
    its summary, as options; None when neither is there."""
    path = Path(run_dir) / OPTIONS_FILE
    if path.is_file():
        return read_json(path, "recorded options", "remove that run folder or rerun it")
    if summary is None:
        return None
    return {
        option: summary[field] for field, option in SUMMARY_SETTING_OPTIONS.items() if summary.get(field) is not None
    }


def read_summary(path):
    """One run as a flat dict: setting (headline fields, `setting_key`, `method_options`), method,
    lr, seed, values (fractions for EM/F1, NaN when absent), run_dir."""
    summary = read_json(path, "run summary", "remove it or rerun that evaluation")
    if not summary.get("method"):
        raise UsageError(f"{path} has no 'method'; it is not a complete run.py eval summary")
    run = {column: summary.get(column) for column in HEADLINE_COLUMNS}
    run["method"] = str(summary["method"])
    run["adapts"] = bool(summary.get("adapts", True))
    run["lr"] = _number(summary.get("lr"), path, "lr", required=True)
    run["seed"] = int(_number(summary.get("seed"), path, "seed", required=True))
    for key, column in FRACTION_FIELDS.items():
        run[column] = _fraction(summary.get(key), path, key, required=key != "max_f1")
    for key in ("nll", "wall_time_s"):
        run[key] = _number(summary.get(key), path, key, required=False)
    for group, keys in (("init", ("em", "f1", "nll")), ("unrelated", ("em", "f1"))):
        nested = summary.get(group) or {}
        for key in keys:
            read = _number if key == "nll" else _fraction
            column = f"{group}_{key}" + ("" if key == "nll" else "_fraction")
            run[column] = read(nested.get(key), path, f"{group}.{key}", required=False)
    run_dir = Path(path).parent
    setting, method_options = split_options(recorded_options(run_dir, summary))
    run["setting_key"], run["method_options"] = canonical(setting), canonical(method_options)
    run["run_dir"] = str(run_dir)
    return run


def check_runs(runs):
    """Refuse a run counted twice (same setting, method, lr and seed) and one method name covering
    runs of different method options (e.g. two weight models both called CaMeLS) in one setting."""
    seen, methods = {}, {}
    for run in runs:
        key = (run["setting_key"], run["method"], run["lr"], run["seed"])
        if key in seen:
            raise UsageError(
                f"runs {seen[key]} and {run['run_dir']} are both method={run['method']} "
                f"lr={run['lr']:g} seed={run['seed']} on the same setting; pass a PATH that "
                "holds only one of them"
            )
        seen[key] = run["run_dir"]
        first = methods.setdefault((run["setting_key"], run["method"]), run)
        if first["method_options"] != run["method_options"]:
            changed = differences(json.loads(first["method_options"]), json.loads(run["method_options"]))
            raise UsageError(
                f"runs {first['run_dir']} and {run['run_dir']} are both method={run['method']} on one "
                f"setting but differ in {changed[0]}; give them distinct method_label=... or pass a "
                "PATH that holds only one of them"
            )


def load_runs(paths):
    """All runs under `paths`, one dict each; UsageError when there are none or one is duplicated."""
    summaries = find_summaries(paths)
    if not summaries:
        shown = " ".join(str(p) for p in paths)
        raise UsageError(
            f"no {SUMMARY_NAME} under {shown}; point report.py at the output folders of "
            "`python run.py task=eval` runs (finished runs write summary.json)"
        )
    diverged = [
        path
        for path in summaries
        if read_json(path, "run summary", "remove it or rerun that evaluation").get("diverged") is True
    ]
    if diverged:  # no metrics to compare: such an lr is not a candidate
        print(f"report: leaving out {len(diverged)} diverged run(s), e.g. {diverged[0].parent}", file=sys.stderr)
    runs = [read_summary(path) for path in summaries if path not in diverged]
    if not runs:
        raise UsageError(f"every run under {' '.join(str(p) for p in paths)} diverged; there is nothing to report")
    check_runs(runs)
    return runs


# ---------------------------------------------------------------------------------------------
# Grid points without a finished run


def _method_of(options):
    return str(options.get("method_label") or method_name(options.get("model.name"), options.get("qa_lt_final")))


def _sweep_values(manifest):
    """(lrs, number of seeds) of the Hydra multirun recorded in `manifest` (multirun.yaml): its `lr=`
    override's values and its `seed=` override's count (1 without a seed sweep); None when it
    names no lr or cannot be read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        overrides = OverridesParser.create().parse_overrides(
            [str(o) for o in OmegaConf.load(manifest).hydra.overrides.task]
        )
    except Exception:  # a damaged or foreign multirun.yaml: its unfinished folders are still found
        return None
    by_key = {override.key_or_group: override for override in overrides}

    def values(key):
        override = by_key.get(key)
        if override is None:
            return None
        if override.is_sweep_override():
            return list(override.sweep_string_iterator())
        return [str(override.value())]

    lrs = values("lr")
    if lrs is None:
        return None
    return [float(lr) for lr in lrs], len(values("seed") or [None])


def find_gaps(paths, runs):
    """The grid points of the sweeps under `paths` that have no finished run in `runs` (see the
    module docstring): dicts with setting_key, method, lr, why (text), where (a folder)."""

    def same_point(run, setting_key, method, lr):
        return (run["setting_key"], run["method"]) == (setting_key, method) and np.isclose(
            run["lr"], lr, rtol=1e-9, atol=0
        )

    gaps, started = [], []
    folders = [Path(p) for p in paths if Path(p).is_dir()]
    for folder in folders:
        for options_path in folder.rglob(OPTIONS_FILE):
            run_dir = options_path.parent
            if (run_dir / SUMMARY_NAME).exists():
                continue  # finished (or diverged: run, with no numbers)
            options = recorded_options(run_dir)
            if options.get("task_name", "eval") != "eval" or "lr" not in options:
                continue
            setting, _ = split_options(options)
            point = dict(
                setting_key=canonical(setting),
                method=_method_of(options),
                lr=float(options["lr"]),
                run_dir=run_dir.resolve(),
            )
            started.append(point)
            if not any(
                same_point(r, point["setting_key"], point["method"], point["lr"]) and r["seed"] == options.get("seed")
                for r in runs
            ):  # not finished elsewhere
                gaps.append(dict(point, why="unfinished", where=str(run_dir)))
    for manifest in sorted({m.resolve() for folder in folders for m in folder.rglob(MULTIRUN_NAME)}):
        sweep = _sweep_values(manifest)
        if sweep is None:
            continue
        lrs, n_seeds = sweep
        root = manifest.parent
        members = [r for r in runs if root in Path(r["run_dir"]).resolve().parents]
        members += [s for s in started if root in s["run_dir"].parents]
        for setting_key, method in sorted({(m["setting_key"], m["method"]) for m in members}):
            for lr in lrs:
                seeds = {r["seed"] for r in runs if same_point(r, setting_key, method, lr)}
                if len(seeds) < n_seeds:
                    gaps.append(
                        dict(
                            setting_key=setting_key,
                            method=method,
                            lr=lr,
                            where=str(root),
                            why=f"{len(seeds)} of {n_seeds} seeds finished",
                        )
                    )
    return gaps


def missing_lrs(gaps):
    """(setting_key, method) -> the sorted distinct lrs of `gaps`."""
    missing = {}
    for gap in gaps:
        lrs = missing.setdefault((gap["setting_key"], gap["method"]), [])
        if not any(np.isclose(gap["lr"], lr, rtol=1e-9, atol=0) for lr in lrs):
            lrs.append(gap["lr"])
    return {key: sorted(lrs) for key, lrs in missing.items()}


def gap_warnings(gaps):
    """One warning line per method (and setting) whose grid has lrs without a finished run."""
    lines = []
    for (setting_key, method), lrs in missing_lrs(gaps).items():
        mine = [g for g in gaps if (g["setting_key"], g["method"]) == (setting_key, method)]
        details = "; ".join(dict.fromkeys(f"{g['lr']:g}: {g['why']} ({g['where']})" for g in mine))
        lines.append(
            f"warning: {method}'s lr grid is incomplete, missing lr {', '.join(f'{lr:g}' for lr in lrs)} "
            f"({details}); its best lr is the best of an incomplete grid"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Aggregation


def _check_metric(metric):
    if metric not in METRICS:
        raise UsageError(f"metric {metric!r} is unknown; use one of {', '.join(METRICS)}")


def setting_labels(setting_keys):
    """setting_key -> the options (beyond the headline fields) in which that setting differs from the
    others among `setting_keys`: '' for a single setting."""
    options = {key: json.loads(key) for key in dict.fromkeys(setting_keys)}
    headline = set(HEADLINE_OPTIONS)
    names = sorted({name for recorded in options.values() for name in recorded} - headline)
    differing = [
        name for name in names if len({json.dumps(recorded.get(name, UNRECORDED)) for recorded in options.values()}) > 1
    ]
    shown, hidden = differing[:6], len(differing) - 6
    labels = {}
    for key, recorded in options.items():
        parts = [f"{name}={recorded.get(name, UNRECORDED)}" for name in shown]
        if hidden > 0:
            parts.append(f"and {hidden} more options (settings.json)")
        labels[key] = ", ".join(parts)
    return labels


def _seed_list(seeds):
    return ";".join(str(int(seed)) for seed in seeds)


def aggregate_runs(runs, metric="f1", gaps=()):
    """One row per setting × method × lr: setting_key, setting (what tells it apart), the headline
    fields, seeds, n_seeds, `<value>_mean`/`_std` over seeds (pandas; std with ddof=1), missing_lrs
    (lrs of that method's grid without a finished run, from `gaps`: find_gaps) and own-tree `best`."""
    _check_metric(metric)
    frame = pd.DataFrame(runs).sort_values("seed", kind="stable")
    for column in VALUE_COLUMNS:  # runs from older code may lack a column
        if column not in frame:
            frame[column] = math.nan
    named = {"n_seeds": ("seed", "size"), "seeds": ("seed", _seed_list), "adapts": ("adapts", "all")}
    named.update({column: (column, "first") for column in HEADLINE_COLUMNS})
    for column in VALUE_COLUMNS:
        named[f"{column}_mean"] = (column, "mean")
        named[f"{column}_std"] = (column, "std")  # pandas' sample std (ddof=1); NaN for one seed
    table = frame.groupby(["setting_key", "method", "lr"], sort=False).agg(**named).reset_index()

    labels = setting_labels(table["setting_key"])
    table.insert(1, "setting", table["setting_key"].map(labels))
    missing = missing_lrs(gaps)
    table["missing_lrs"] = [
        ";".join(f"{lr:g}" for lr in missing.get((key, method), []))
        for key, method in zip(table["setting_key"], table["method"])
    ]

    def order(index):
        row = table.loc[index]
        headline = tuple("" if pd.isna(row[c]) else str(row[c]) for c in HEADLINE_COLUMNS)
        return headline, row["setting_key"], method_sort_key(row["method"]), row["lr"]

    table = table.loc[sorted(table.index, key=order)].reset_index(drop=True)
    table["best"] = _is_chosen(table, best_lrs(table, metric))
    return table


def aggregate(paths, metric="f1"):
    """Read every summary.json under `paths` and aggregate; see `aggregate_runs`."""
    _check_metric(metric)
    runs = load_runs(paths)
    return aggregate_runs(runs, metric, find_gaps(paths, runs))


# ---------------------------------------------------------------------------------------------
# Learning-rate selection


def _pick_lr(rows, metric, where):
    """The row of `rows` (one method, one setting) with the best mean metric; means within
    TIE_TOLERANCE of the best tie, and the smaller lr wins a tie."""
    column = f"{METRIC_COLUMNS[metric]}_mean"
    scored = rows[rows[column].notna()]
    if scored.empty:
        method = rows.iloc[0]["method"]
        raise UsageError(
            f"no {metric} in the {where}runs of method {method}; evaluate with that metric "
            "(nll needs eval to include ppl) or choose another --metric"
        )
    best_value = scored[column].min() if metric == "nll" else scored[column].max()
    tied = scored[(scored[column] - best_value).abs() <= TIE_TOLERANCE]
    return tied.sort_values("lr", kind="stable").iloc[0]


def grid_ratio(lrs):
    """The mean factor between neighbouring values of a log-spaced grid: (largest / smallest) ** (1 / (n - 1))."""
    lrs = sorted(float(lr) for lr in lrs)
    return (lrs[-1] / lrs[0]) ** (1 / (len(lrs) - 1))


def lr_beyond_edge(best, lrs, ratio=None):
    """When `best` is the smallest or largest of the two or more `lrs`, the next value beyond that edge
    (`ratio` away, by default the grid's grid_ratio; 3 significant digits); else None."""
    lrs = sorted(float(lr) for lr in lrs)
    if len(lrs) < 2:
        return None
    ratio = ratio or grid_ratio(lrs)
    if np.isclose(best, lrs[0], rtol=1e-9, atol=0):
        return float(f"{best / ratio:.3g}")
    if np.isclose(best, lrs[-1], rtol=1e-9, atol=0):
        return float(f"{best * ratio:.3g}")
    return None


def _grid_facts(candidates, winner):
    """The grid the winner was chosen from: its lrs (tried and missing), the edge the winner sits
    at, the lr beyond it, the missing lrs, and a note."""
    missing = [float(lr) for lr in str(candidates.iloc[0].get("missing_lrs") or "").split(";") if lr]
    grid = sorted(set(candidates["lr"].astype(float)) | set(missing))
    facts = dict(
        grid=";".join(f"{lr:g}" for lr in grid),
        edge="",
        next_lr=math.nan,
        missing_lrs=";".join(f"{lr:g}" for lr in missing),
    )
    notes = []
    if not bool(winner.get("adapts", True)):
        return facts, notes  # the lr of a method that never adapts changes nothing
    if missing:
        notes.append(f"best of an incomplete grid (missing lr {', '.join(f'{lr:g}' for lr in missing)})")
    beyond = lr_beyond_edge(winner["lr"], grid)
    if beyond is not None:
        facts.update(edge="smallest" if beyond < winner["lr"] else "largest", next_lr=beyond)
        notes.append(f"the {facts['edge']} lr of its grid: try lr={beyond:g}")
    elif len(grid) == 1:
        notes.append("one lr run: not a sweep")
    return facts, notes


def best_lrs(table, metric="f1", selection=None):
    """Each method's chosen lr per setting of `table`, with that lr's numbers from `table`.

    Without `selection` the lr is chosen on `table` itself. With `selection` (the aggregate of a
    validation tree) it is chosen there, among the validation runs of the same method whose options
    equal the setting's but for STREAM_OPTIONS. Columns: the setting, method, lr, the numbers of
    `table` at that lr, `selected_on` ("same runs" or "validation"), `selection_value` (mean metric
    that won), the grid it was chosen from (`grid`, `missing_lrs`), `edge` (smallest/largest when
    the winner sits there), `next_lr` (the lr beyond that edge) and `note`.
    """
    _check_metric(metric)
    rows = []
    for _, group in table.groupby(["setting_key", "method"], sort=False):
        if selection is None:
            winner = _pick_lr(group, metric, "")
            chosen = winner.to_dict()
            facts, notes = _grid_facts(group, winner)
            chosen.update(
                selected_on="same runs",
                selection_value=winner[f"{METRIC_COLUMNS[metric]}_mean"],
                **facts,
                note="; ".join(notes),
            )
            rows.append(chosen)
        else:
            rows.append(_select_from_validation(group, selection, metric))
    columns = [c for c in table.columns if c not in ("best", "missing_lrs")]
    return pd.DataFrame(
        rows, columns=columns + ["selected_on", "selection_value", "grid", "missing_lrs", "edge", "next_lr", "note"]
    )


def _selection_key(setting_key):
    options = json.loads(setting_key)
    return canonical({k: v for k, v in options.items() if not _covered(k, STREAM_OPTIONS)})


def _select_from_validation(group, selection, metric):
    first = group.iloc[0]
    candidates = selection[
        (selection["method"] == first["method"])
        & (selection["setting_key"].map(_selection_key) == _selection_key(first["setting_key"]))
    ]
    empty_row = {c: first[c] for c in ["setting_key", "setting", *HEADLINE_COLUMNS, "method"]}
    empty_row.update(lr=math.nan, n_seeds=0, selected_on="validation", selection_value=math.nan)
    if candidates.empty:
        empty_row["note"] = "no validation runs of this method"
        return empty_row
    val_settings = candidates["setting_key"].unique()
    if len(val_settings) > 1:
        changed = differences(json.loads(val_settings[0]), json.loads(val_settings[1]))
        raise UsageError(
            f"validation runs of method {first['method']} come from {len(val_settings)} settings "
            f"(e.g. {changed[0]}); narrow --select-from to one of them"
        )
    winner = _pick_lr(candidates, metric, "validation ")
    facts, notes = _grid_facts(candidates, winner)
    # Sweeps written as 2.5e-5 and 0.000025 parse to the same float, but a computed lr may not
    at_lr = group[np.isclose(group["lr"], winner["lr"], rtol=1e-9, atol=0)]
    winning_value = winner[f"{METRIC_COLUMNS[metric]}_mean"]
    if at_lr.empty:
        notes.insert(0, f"no runs at the lr chosen on validation ({winner['lr']:g})")
        empty_row.update(lr=winner["lr"], selection_value=winning_value, **facts, note="; ".join(notes))
        return empty_row
    chosen = at_lr.iloc[0].to_dict()
    chosen.update(selected_on="validation", selection_value=winning_value, **facts, note="; ".join(notes))
    return chosen


def _is_chosen(table, best):
    chosen = {(row["setting_key"], row["method"], row["lr"]) for _, row in best.iterrows() if row["n_seeds"]}
    return [(row["setting_key"], row["method"], row["lr"]) in chosen for _, row in table.iterrows()]


def extension_commands(best, runs):
    """For each best lr at an edge of its grid, a warning line with the command that runs the next
    lr beyond it: the overrides of one of its runs (.hydra/overrides.yaml), with that lr and the
    seeds of the best lr's runs. `runs`: the runs the lr was chosen on."""
    lines = []
    for _, row in best[best["next_lr"].notna()].iterrows():
        # validation runs share the test setting's options but for the stream's
        key = _selection_key if row["selected_on"] == "validation" else (lambda setting_key: setting_key)
        at_best = [
            r
            for r in runs
            if key(r["setting_key"]) == key(row["setting_key"])
            and r["method"] == row["method"]
            and np.isclose(r["lr"], row["lr"], rtol=1e-9, atol=0)
        ]
        seeds, example = sorted({r["seed"] for r in at_best}), at_best[0]
        overrides = _job_overrides(Path(example["run_dir"]))
        kept = (
            [
                shlex.quote(o)
                for o in overrides
                if o.split("=", 1)[0].lstrip("+~") not in ("lr", "seed") and not o.lstrip("+~").startswith("hydra.")
            ]
            if overrides is not None
            else [f"<the options of {example['run_dir']}>"]
        )
        command = " ".join(
            ["python run.py -m", *kept, f"lr={row['next_lr']:g}", f"seed={','.join(str(s) for s in seeds)}"]
        )
        lines.append(
            f"warning: {row['method']}'s best lr {row['lr']:g} is the {row['edge']} of its grid "
            f"({row['grid'].replace(';', ', ')}); the optimum may lie beyond it, run: {command}"
        )
    return lines


def _job_overrides(run_dir):
    """A Hydra job's command-line overrides (.hydra/overrides.yaml), None without that file."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        return [str(o) for o in OmegaConf.load(path)]
    except Exception:  # a damaged file: the command names the run folder instead
        return None


# ---------------------------------------------------------------------------------------------
# Writing


def _for_csv(frame):
    return frame.drop(columns=INTERNAL_COLUMNS, errors="ignore").to_csv(index=False)


def write_report(table, best, out_dir, metric="f1", paired=None):
    """Write results.md, results.csv, best.csv, settings.json, best_f1.png (and paired.csv with
    `paired`, from paired_stats.paired_table) into `out_dir`; return the markdown.

    `table["best"]` is re-marked from `best`, so lrs chosen on a validation tree are the ones
    flagged. Everything is rendered before the first file is written.
    """
    _check_metric(metric)
    out_dir = Path(out_dir)
    if (out_dir / SUMMARY_NAME).exists():
        raise UsageError(f"--out {out_dir} is a run folder (its results.csv would be replaced); choose another folder")
    table = table.copy()
    table["best"] = _is_chosen(table, best)
    markdown = render_markdown(table, best, metric, paired)
    png = render_chart_png(best)
    if paired is not None:
        atomic_write_text(_for_csv(paired), out_dir / "paired.csv")
    atomic_write_text(markdown, out_dir / "results.md")
    atomic_write_text(_for_csv(table), out_dir / "results.csv")
    atomic_write_text(_for_csv(best), out_dir / "best.csv")
    atomic_write_text(settings_json(table), out_dir / "settings.json")
    with atomic_path(out_dir / "best_f1.png") as tmp:
        tmp.write_bytes(png)
    return markdown


# ---------------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message}; see python report.py --help")


def main(argv=None):
    parser = _Parser(description="Aggregate run.py eval runs into result tables and a chart.")
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="run folders or trees of them (Hydra multirun included)"
    )
    parser.add_argument("--out", help="output folder (default: PATH/report for the first PATH)")
    parser.add_argument(
        "--metric", default="f1", choices=METRICS, help="metric that picks each method's best lr (nll: lowest wins)"
    )
    parser.add_argument(
        "--select-from", metavar="DIR", help="pick the best lrs on the runs under DIR (validation), report PATH's"
    )
    parser.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help="comma-separated methods, the best of which every other method is compared to "
        "(paired bootstrap over the shared streams' questions; empty: no comparison)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=10_000, metavar="N", help="bootstrap resamples of the paired comparison"
    )
    args = parser.parse_args(argv)
    if args.bootstrap < 100:
        raise UsageError(f"--bootstrap {args.bootstrap} is too few resamples for a 95% interval; use at least 100")
    first = Path(args.paths[0])
    out_dir = Path(args.out) if args.out else (first.parent if first.is_file() else first) / "report"
    check_folder_path(out_dir, "--out")

    runs = load_runs(args.paths)
    gaps = find_gaps(args.paths, runs)
    table = aggregate_runs(runs, args.metric, gaps)
    chooser_runs, selection = runs, None
    if args.select_from:
        chooser_runs = load_runs([args.select_from])
        selection_gaps = find_gaps([args.select_from], chooser_runs)
        gaps = selection_gaps + gaps
        selection = aggregate_runs(chooser_runs, args.metric, selection_gaps)
    best = best_lrs(table, args.metric, selection)
    baselines = [name for name in args.baselines.split(",") if name]
    paired = None
    if baselines:
        columns = ["setting_key", "setting", *HEADLINE_COLUMNS]
        paired = paired_table(
            best,
            runs,
            baselines,
            columns,
            lambda a, b: a["setting_key"] == b["setting_key"],
            "em" if args.metric == "em" else "f1",
            args.bootstrap,
        )
    warnings = gap_warnings(gaps) + extension_commands(best, chooser_runs)
    for line in warnings:  # before the tables that name the best lrs
        print(line)
    markdown = write_report(table, best, out_dir, args.metric, paired)
    print(markdown)
    print(
        f"wrote {out_dir}/results.md, results.csv, best.csv, settings.json, best_f1.png"
        + (", paired.csv" if baselines else "")
    )


if __name__ == "__main__":
    run_cli(main)
