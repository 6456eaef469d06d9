"""Aggregate evaluation runs (`run.py task=eval`, single or multirun) into the paper-style table.

    python report.py PATH [PATH ...] [--out DIR] [--metric f1|em|nll] [--select-from DIR]

Every `summary.json` under the PATHs is one run. Runs are grouped by *setting* — dataset, split
(or test_path), base model, downsample_to, optimizer, n_epochs: one table each, never an average
of incomparable runs — and inside a setting by (method, lr), whose seeds are averaged (mean ±
sample std, ddof=1; blank for one seed). Two runs with the same setting, method, lr and seed are
refused (one would count twice): narrow the PATH to one of them.

Each method's best lr is the one with the highest mean --metric (lowest for nll). With
`--select-from VAL_DIR` the best lr is chosen on the runs under VAL_DIR (a validation sweep) and
the numbers are reported from the PATH runs (test), so the choice never looks at test; a test
setting takes the validation runs of its dataset, base model, optimizer and n_epochs. A method
without validation runs, or without test runs at its chosen lr, keeps a row with a note.

Outputs (in --out, default PATH/report for the first PATH, each file written atomically):
  results.md   full table (EM/F1 × 100, one decimal; best lr in bold) + best-per-method table;
               also printed
  results.csv  one row per setting × method × lr; metrics as fractions in [0, 1] (NLL in nats),
               `<metric>_mean` / `<metric>_std` columns, `best` marks the chosen lr
  best.csv     one row per setting × method at its chosen lr
  best_f1.png  bar chart of each method's F1 at its chosen lr, std over seeds as error bars

Library use (e.g. from a demo script):
    table = aggregate(["outputs/eval"], metric="f1")
    best = best_lrs(table, metric="f1", selection=aggregate(["outputs/val"], "f1"))
    write_report(table, best, "outputs/report", metric="f1")
"""
import argparse
import io
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from paired_stats import paired_table
from plumbing.errors import UsageError, run_cli
from plumbing.files import atomic_path, atomic_write_text, check_folder_path, read_json

SUMMARY_NAME = "summary.json"
SETTING_COLUMNS = ["dataset", "split", "base_model", "downsample_to", "optimizer", "n_epochs"]
# Validation and test runs of one experiment differ in split (and often stream size) only
SELECTION_COLUMNS = ["dataset", "base_model", "optimizer", "n_epochs"]
# Averaged over seeds; init_* = before adaptation, unrelated_* = held-out QA (forgetting)
VALUE_COLUMNS = ["em", "f1", "max_f1", "nll", "init_em", "init_f1", "init_nll",
                 "unrelated_em", "unrelated_f1", "wall_time_s"]
PERCENT_COLUMNS = {"em", "f1", "max_f1", "init_em", "init_f1", "unrelated_em", "unrelated_f1"}
# The floor (no adaptation) first, the ceiling (oracle: answer tokens only) last
METHOD_ORDER = ["none", "uniform", "uniform+qa_tune", "ssm", "TFIDF", "surprisal", "excess_loss", "CaMeLS", "oracle"]
BASELINES = ("uniform", "uniform+qa_tune", "ssm", "TFIDF", "surprisal", "excess_loss")
METRICS = ("f1", "em", "nll")
METRIC_LABELS = {"em": "EM", "f1": "F1", "max_f1": "max F1", "nll": "NLL",
                 "init_em": "EM before", "init_f1": "F1 before", "init_nll": "NLL before",
                 "unrelated_em": "unrelated EM", "unrelated_f1": "unrelated F1"}


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


def read_summary_file(path):
    """The JSON object of a summary.json; one line naming the file when it is damaged or no object."""
    return read_json(path, "run summary", "remove it or rerun that evaluation")


def read_summary(path):
    """One run as a flat dict: setting, method, lr, seed, values (NaN when absent), run_dir."""
    summary = read_summary_file(path)
    if not summary.get("method"):
        raise UsageError(f"{path} has no 'method'; it is not a complete run.py eval summary")
    run = {column: summary.get(column) for column in SETTING_COLUMNS}
    run["method"] = str(summary["method"])
    run["adapts"] = bool(summary.get("adapts", True))
    run["lr"] = _number(summary.get("lr"), path, "lr", required=True)
    run["seed"] = int(_number(summary.get("seed"), path, "seed", required=True))
    for key in ("em", "f1"):
        run[key] = _number(summary.get(key), path, key, required=True)
    for key in ("max_f1", "nll", "wall_time_s"):
        run[key] = _number(summary.get(key), path, key, required=False)
    for group, keys in (("init", ("em", "f1", "nll")), ("unrelated", ("em", "f1"))):
        nested = summary.get(group) or {}
        for key in keys:
            run[f"{group}_{key}"] = _number(nested.get(key), path, f"{group}.{key}", required=False)
    run["run_dir"] = str(Path(path).parent)
    return run


def load_runs(paths):
    """All runs under `paths`, one dict each; UsageError when there are none or one is duplicated."""
    summaries = find_summaries(paths)
    if not summaries:
        shown = " ".join(str(p) for p in paths)
        raise UsageError(
            f"no {SUMMARY_NAME} under {shown}; point report.py at the output folders of "
            "`python run.py task=eval` runs (finished runs write summary.json)"
        )
    diverged = [path for path in summaries if read_summary_file(path).get("diverged") is True]
    if diverged:  # no metrics to compare: such an lr is not a candidate
        print(f"report: leaving out {len(diverged)} diverged run(s), e.g. {diverged[0].parent}", file=sys.stderr)
    runs = [read_summary(path) for path in summaries if path not in diverged]
    if not runs:
        raise UsageError(f"every run under {' '.join(str(p) for p in paths)} diverged; there is nothing to report")
    seen = {}
    for run in runs:
        key = tuple(run[c] for c in SETTING_COLUMNS) + (run["method"], run["lr"], run["seed"])
        if key in seen:
            raise UsageError(
                f"runs {seen[key]} and {run['run_dir']} are both method={run['method']} "
                f"lr={run['lr']:g} seed={run['seed']} on the same setting; pass a PATH that "
                "holds only one of them"
            )
        seen[key] = run["run_dir"]
    return runs


# ---------------------------------------------------------------------------------------------
# Aggregation and lr selection


def _setting_sort_key(setting):
    return tuple("" if value is None else str(value) for value in setting)


def _mean_std(values):
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return float(np.mean(values)), std


def aggregate_runs(runs, metric="f1"):
    """One row per setting × method × lr: seeds, n_seeds, `<value>_mean`/`_std`, own-tree `best`."""
    groups = {}
    for run in runs:
        setting = tuple(run[c] for c in SETTING_COLUMNS)
        groups.setdefault((setting, run["method"], run["lr"]), []).append(run)
    order = sorted(groups, key=lambda k: (_setting_sort_key(k[0]), method_sort_key(k[1]), k[2]))
    rows = []
    for setting, method, lr in order:
        members = sorted(groups[(setting, method, lr)], key=lambda r: r["seed"])
        row = dict(zip(SETTING_COLUMNS, setting))
        row.update(method=method, lr=lr, adapts=all(r["adapts"] for r in members), n_seeds=len(members),
                   seeds=";".join(str(r["seed"]) for r in members))
        for column in VALUE_COLUMNS:
            row[f"{column}_mean"], row[f"{column}_std"] = _mean_std([r[column] for r in members])
        rows.append(row)
    table = pd.DataFrame(rows)
    chosen = best_lrs(table, metric)
    table["best"] = _is_chosen(table, chosen)
    return table


def aggregate(paths, metric="f1"):
    """Read every summary.json under `paths` and aggregate; see `aggregate_runs`."""
    _check_metric(metric)
    return aggregate_runs(load_runs(paths), metric)


def _check_metric(metric):
    if metric not in METRICS:
        raise UsageError(f"metric {metric!r} is unknown; use one of {', '.join(METRICS)}")


def _key_equal(row, other, columns):
    return all(_same(row[c], other[c]) for c in columns)


def _same(a, b):
    """Equality where two missing values (None / NaN) match, as for settings without that field."""
    a_missing = a is None or (isinstance(a, float) and math.isnan(a))
    b_missing = b is None or (isinstance(b, float) and math.isnan(b))
    return (a_missing and b_missing) or (not a_missing and not b_missing and a == b)


def _pick_lr(rows, metric, where):
    """The lr of `rows` (one method, one setting) with the best mean metric; ties go to the smaller lr."""
    scored = rows[rows[f"{metric}_mean"].notna()]
    if scored.empty:
        method = rows.iloc[0]["method"]
        raise UsageError(
            f"no {metric} in the {where}runs of method {method}; evaluate with that metric "
            "(nll needs eval to include ppl) or choose another --metric"
        )
    ascending = metric == "nll"
    ranked = scored.sort_values([f"{metric}_mean", "lr"], ascending=[ascending, True], kind="stable")
    return ranked.iloc[0]


def best_lrs(table, metric="f1", selection=None):
    """Each method's chosen lr per setting of `table`, with that lr's numbers from `table`.

    Without `selection` the lr is chosen on `table` itself. With `selection` (the aggregate of a
    validation tree) it is chosen there, among the validation runs of the same method whose
    dataset, base model, optimizer and n_epochs match. Columns: the setting, method, lr, the
    numbers of `table` at that lr, `selected_on` ("same runs" or "validation"), `selection_value`
    (mean metric that won) and `note` (why a row has no numbers).
    """
    _check_metric(metric)
    rows = []
    for _, group in table.groupby(SETTING_COLUMNS + ["method"], dropna=False, sort=False):
        if selection is None:
            winner = _pick_lr(group, metric, "")
            chosen = winner.to_dict()
            chosen.update(selected_on="same runs", selection_value=winner[f"{metric}_mean"], note="")
            rows.append(chosen)
        else:
            rows.append(_select_from_validation(group, selection, metric))
    return pd.DataFrame(rows, columns=list(table.columns.drop("best", errors="ignore"))
                        + ["selected_on", "selection_value", "note"])


def _select_from_validation(group, selection, metric):
    first = group.iloc[0]
    candidates = selection[selection["method"] == first["method"]]
    candidates = candidates[[_key_equal(first, other, SELECTION_COLUMNS)
                             for _, other in candidates.iterrows()]]
    empty_row = {c: first[c] for c in SETTING_COLUMNS + ["method"]}
    empty_row.update(lr=math.nan, n_seeds=0, selected_on="validation", selection_value=math.nan)
    if candidates.empty:
        empty_row["note"] = "no validation runs of this method"
        return empty_row
    val_settings = candidates.groupby(SETTING_COLUMNS, dropna=False, sort=False)
    if val_settings.ngroups > 1:
        shown = "; ".join(", ".join(f"{c}={v}" for c, v in zip(SETTING_COLUMNS, key)) for key in val_settings.groups)
        raise UsageError(f"validation runs of method {first['method']} come from {val_settings.ngroups} "
                         f"settings ({shown}); narrow --select-from to one of them")
    winner = _pick_lr(candidates, metric, "validation ")
    # Sweeps written as 2.5e-5 and 0.000025 parse to the same float, but a computed lr may not
    at_lr = group[np.isclose(group["lr"], winner["lr"], rtol=1e-9, atol=0)]
    if at_lr.empty:
        empty_row.update(lr=winner["lr"], selection_value=winner[f"{metric}_mean"],
                         note=f"no runs at the lr chosen on validation ({winner['lr']:g})")
        return empty_row
    chosen = at_lr.iloc[0].to_dict()
    chosen.update(selected_on="validation", selection_value=winner[f"{metric}_mean"], note="")
    return chosen


def _is_chosen(table, best):
    chosen = {_row_key(row) for _, row in best.iterrows() if row["n_seeds"]}
    return [_row_key(row) in chosen for _, row in table.iterrows()]


def _row_key(row):
    return _setting_sort_key([row[c] for c in SETTING_COLUMNS]) + (row["method"], row["lr"])


# ---------------------------------------------------------------------------------------------
# Rendering


def _format_value(column, mean, std):
    if mean is None or math.isnan(mean):
        return ""
    scale, digits = (100.0, 1) if column in PERCENT_COLUMNS else (1.0, 3)
    text = f"{scale * mean:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {scale * std:.{digits}f}"
    return text


def _setting_title(row):
    parts = [f"{c}={row[c]}" for c in SETTING_COLUMNS if not _same(row[c], None)]
    return ", ".join(parts) or "runs without setting fields"


def _markdown_table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _shown_columns(frame, always):
    """`always` plus the optional value columns that have numbers somewhere in `frame`."""
    optional = [c for c in VALUE_COLUMNS if c not in always and c != "wall_time_s"
                and frame[f"{c}_mean"].notna().any()]
    return list(always) + optional


def render_paired(paired, setting_row, metric):
    """The paired-comparison table of one setting ('' when it has none)."""
    rows = paired[[_key_equal(setting_row, row, SETTING_COLUMNS) for _, row in paired.iterrows()]] \
        if not paired.empty else paired
    if rows.empty:
        return ""
    label = METRIC_LABELS[metric]
    baseline = rows.iloc[0]["baseline"]
    lines = [[row["method"], f"{100 * row['difference']:+.1f}",
              f"[{100 * row['ci_questions_low']:+.1f}, {100 * row['ci_questions_high']:+.1f}]",
              f"[{100 * row['ci_streams_low']:+.1f}, {100 * row['ci_streams_high']:+.1f}]",
              str(row["n_streams"]), str(row["n_questions"])] for _, row in rows.iterrows()]
    header = ["Method", f"{label} − {baseline}", "95% CI (questions)", "95% CI (streams and questions)",
              "Streams", "Questions"]
    return (f"### Paired comparison with the best baseline ({baseline})\n\nDifference of test {label} (points) "
            f"to {baseline}, the baseline with the highest test {label}, on the same streams and questions; "
            "95% intervals by a paired bootstrap over the questions of each stream, and over the streams "
            "and their questions.\n\n" + _markdown_table(header, lines))


def lr_text(row):
    """The lr as tables show it; "–" for a method that never adapts (a missing `adapts` adapts)."""
    adapts = row.get("adapts")
    return "–" if isinstance(adapts, (bool, np.bool_)) and not adapts else f"{row['lr']:g}"


def render_markdown(table, best, metric, paired=None):
    """results.md: per setting the full method × lr table, the best-per-method table, and the
    paired comparison with the best baseline."""
    label = METRIC_LABELS[metric]
    via_validation = (best["selected_on"] == "validation").any()
    chosen_by = f"mean {label} on the validation runs" if via_validation else f"mean {label}"
    direction = "lowest" if metric == "nll" else "highest"
    sections = [f"# Online adaptation results\n\nBest lr of each method = {direction} {chosen_by} "
                "(bold in the full table). EM and F1 in %, mean ± sample std over seeds."]
    for _, group in table.groupby(SETTING_COLUMNS, dropna=False, sort=False):
        columns = _shown_columns(group, ["em", "f1"])
        header = ["Method", "LR"] + [METRIC_LABELS[c] for c in columns] + ["Seeds"]
        lines = []
        for _, row in group.iterrows():
            lr = lr_text(row)
            lines.append([row["method"], f"**{lr}**" if row["best"] else lr]
                         + [_format_value(c, row[f"{c}_mean"], row[f"{c}_std"]) for c in columns]
                         + [str(row["n_seeds"])])
        sections.append(f"## {_setting_title(group.iloc[0])}\n\n" + _markdown_table(header, lines))

        best_here = best[[_key_equal(group.iloc[0], row, SETTING_COLUMNS) for _, row in best.iterrows()]]
        best_columns = ["em", "f1"] + (["nll"] if best_here["nll_mean"].notna().any() else [])
        best_header = ["Method", "LR"] + [METRIC_LABELS[c] for c in best_columns] + ["Seeds"]
        if via_validation:
            best_header.append(f"{label} on validation")
        best_lines = []
        for _, row in best_here.iterrows():
            lr = "" if math.isnan(row["lr"]) else lr_text(row)
            line = ([row["method"], lr]
                    + [_format_value(c, row[f"{c}_mean"], row[f"{c}_std"]) for c in best_columns]
                    + [str(row["n_seeds"])])
            if via_validation:
                value = _format_value(metric, row["selection_value"], None)
                line.append("; ".join(text for text in (value, row["note"]) if text))
            best_lines.append(line)
        sections.append("### Best lr per method\n\n" + _markdown_table(best_header, best_lines))
        if paired is not None:
            sections.append(render_paired(paired, group.iloc[0], "em" if metric == "em" else "f1"))
    sections = [section for section in sections if section]
    return "\n\n".join(sections) + "\n"


def render_chart_png(best):
    """PNG bytes: per setting, each method's F1 (%) at its chosen lr with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = best[best["f1_mean"].notna()]
    settings = list(plotted.groupby(SETTING_COLUMNS, dropna=False, sort=False))
    fig, axes = plt.subplots(len(settings) or 1, 1, squeeze=False,
                             figsize=(max(4.0, 1.3 * plotted["method"].nunique() + 1.5),
                                      3.6 * max(1, len(settings))))
    for ax, (_, group) in zip(axes[:, 0], settings):
        names = [f"{row['method']}\nlr={lr_text(row)}" for _, row in group.iterrows()]
        means = 100 * group["f1_mean"].to_numpy(dtype=float)
        stds = 100 * group["f1_std"].to_numpy(dtype=float)
        bars = ax.bar(names, means, yerr=np.nan_to_num(stds), capsize=4, color="#4c72b0")
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], padding=2, fontsize=8)
        ax.set_ylabel("F1 (%)")
        # wrapped to the figure's width: a setting names the base model's full path
        width = int(14 * fig.get_figwidth())
        ax.set_title("\n".join(textwrap.wrap(_setting_title(group.iloc[0]), width) +
                               ["F1 at each method's chosen lr (error bars: std over seeds)"]), fontsize=8)
        ax.margins(y=0.15)
    if not settings:
        axes[0, 0].text(0.5, 0.5, "no F1 at the chosen lrs", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_report(table, best, out_dir, metric="f1", paired=None):
    """Write results.md, results.csv, best.csv, best_f1.png (and paired.csv with `paired`, from
    paired_stats.paired_table) into `out_dir`; return the markdown.

    `table["best"]` is re-marked from `best`, so lrs chosen on a validation tree are the ones
    flagged. Everything is rendered before the first file is written.
    """
    _check_metric(metric)
    out_dir = Path(out_dir)
    if (out_dir / SUMMARY_NAME).exists():
        raise UsageError(f"--out {out_dir} is a run folder (its results.csv would be replaced); "
                         "choose another folder")
    table = table.copy()
    table["best"] = _is_chosen(table, best)
    markdown = render_markdown(table, best, metric, paired)
    png = render_chart_png(best)
    if paired is not None:
        atomic_write_text(paired.to_csv(index=False), out_dir / "paired.csv")
    atomic_write_text(markdown, out_dir / "results.md")
    atomic_write_text(table.to_csv(index=False), out_dir / "results.csv")
    atomic_write_text(best.to_csv(index=False), out_dir / "best.csv")
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
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="run folders or trees of them (Hydra multirun included)")
    parser.add_argument("--out", help="output folder (default: PATH/report for the first PATH)")
    parser.add_argument("--metric", default="f1", choices=METRICS,
                        help="metric that picks each method's best lr (nll: lowest wins)")
    parser.add_argument("--select-from", metavar="DIR",
                        help="pick the best lrs on the runs under DIR (validation), report PATH's")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="comma-separated methods, the best of which every other method is compared to "
                             "(paired bootstrap over the shared streams' questions; empty: no comparison)")
    parser.add_argument("--bootstrap", type=int, default=10_000, metavar="N",
                        help="bootstrap resamples of the paired comparison")
    args = parser.parse_args(argv)
    if args.bootstrap < 100:
        raise UsageError(f"--bootstrap {args.bootstrap} is too few resamples for a 95% interval; use at least 100")
    first = Path(args.paths[0])
    out_dir = Path(args.out) if args.out else (first.parent if first.is_file() else first) / "report"
    check_folder_path(out_dir, "--out")

    runs = load_runs(args.paths)
    _check_metric(args.metric)
    table = aggregate_runs(runs, args.metric)
    selection = aggregate([args.select_from], args.metric) if args.select_from else None
    best = best_lrs(table, args.metric, selection)
    baselines = [name for name in args.baselines.split(",") if name]
    paired = None
    if baselines:
        paired = paired_table(best, runs, baselines, SETTING_COLUMNS,
                              lambda a, b: _key_equal(a, b, SETTING_COLUMNS),
                              "em" if args.metric == "em" else "f1", args.bootstrap)
    markdown = write_report(table, best, out_dir, args.metric, paired)
    print(markdown)
    print(f"wrote {out_dir}/results.md, results.csv, best.csv, best_f1.png" + (", paired.csv" if baselines else ""))


if __name__ == "__main__":
    run_cli(main)
