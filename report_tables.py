"""Rendering of report.py's tables: results.md (markdown) and best_f1.png (bar chart).

Units: EM and F1 are stored as fractions in [0, 1] (columns named `*_fraction_mean`/`_std`) and shown
as percentages with one decimal; NLL is in nats per answer token. Every table that shows EM states
the EM rule next to it.
"""

import io
import json
import math
import textwrap
from pathlib import Path

import numpy as np

# The quantities averaged over seeds, as columns of the table; init_* = before adaptation,
# unrelated_* = held-out QA (forgetting)
VALUE_COLUMNS = [
    "em_fraction",
    "f1_fraction",
    "max_f1_fraction",
    "nll",
    "init_em_fraction",
    "init_f1_fraction",
    "init_nll",
    "unrelated_em_fraction",
    "unrelated_f1_fraction",
    "wall_time_s",
]
# --metric name -> the value column it reads
METRIC_COLUMNS = {"f1": "f1_fraction", "em": "em_fraction", "nll": "nll"}
COLUMN_LABELS = {
    "em_fraction": "EM %",
    "f1_fraction": "F1 %",
    "max_f1_fraction": "max F1 %",
    "nll": "NLL",
    "init_em_fraction": "EM % before",
    "init_f1_fraction": "F1 % before",
    "init_nll": "NLL before",
    "unrelated_em_fraction": "unrelated EM %",
    "unrelated_f1_fraction": "unrelated F1 %",
}
METRIC_LABELS = {"f1": "F1", "em": "EM", "nll": "NLL"}
HEADLINE_COLUMNS = ["dataset", "split", "base_model", "downsample_to", "optimizer", "n_epochs"]
EM_RULE = (
    "EM counts a prediction whose normalised text starts with the normalised answer (the prediction cut to "
    "the answer's length equals it), so EM can exceed F1."
)
STREAM_WORDS = {
    "val": "validation",
    "test": "test",
    "train": "meta-training",
    "qa_train": "QA-tuning",
    "qa_val": "QA-tuning validation",
}


def is_fraction(column):
    return column.endswith("_fraction")


def stream_word(split):
    """'validation', 'test', ... for a split; a test_path stream by its file name."""
    if split is None or (isinstance(split, float) and math.isnan(split)):
        return "evaluation"
    return STREAM_WORDS.get(str(split), f"{Path(str(split)).name} stream")


def format_value(column, mean, std):
    """A mean (± std) as tables show it: fractions as percentages with one decimal, else 3 decimals."""
    if mean is None or math.isnan(mean):
        return ""
    scale, digits = (100.0, 1) if is_fraction(column) else (1.0, 3)
    text = f"{scale * mean:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {scale * std:.{digits}f}"
    return text


def lr_text(row):
    """The lr as tables show it; "–" for a method that never adapts (a missing `adapts` adapts)."""
    adapts = row.get("adapts")
    return "–" if isinstance(adapts, (bool, np.bool_)) and not adapts else f"{row['lr']:g}"


def _present(value):
    return not (value is None or (isinstance(value, float) and math.isnan(value)) or value == "")


def setting_title(row):
    """The headline fields of a setting, then the options in which it differs from the other settings."""
    parts = [f"{c}={row[c]}" for c in HEADLINE_COLUMNS if _present(row.get(c))]
    if _present(row.get("setting")):
        parts.append(row["setting"])
    return ", ".join(parts) or "runs without setting fields"


def short_title(row):
    """A setting in a few words (for the chart): dataset, stream, the base model's folder name, options."""
    parts = [str(row[c]) for c in ("dataset",) if _present(row.get(c))]
    parts.append(stream_word(row.get("split")))
    if _present(row.get("base_model")):
        parts.append(f"base {Path(str(row['base_model'])).name}")
    if _present(row.get("downsample_to")):
        parts.append(f"{row['downsample_to']} docs")
    if _present(row.get("setting")):
        parts.append(row["setting"])
    return ", ".join(parts)


def markdown_table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def shown_columns(frame, always):
    """`always` plus the optional value columns that have numbers somewhere in `frame`."""
    optional = [c for c in VALUE_COLUMNS if c not in always and c != "wall_time_s" and frame[f"{c}_mean"].notna().any()]
    return list(always) + optional


def rows_of_setting(frame, setting_key):
    if frame is None or frame.empty:
        return frame
    return frame[frame["setting_key"] == setting_key]


def render_paired(paired, setting_row, metric):
    """The paired-comparison table of one setting ('' when it has none)."""
    rows = rows_of_setting(paired, setting_row["setting_key"])
    if rows is None or rows.empty:
        return ""
    label = METRIC_LABELS[metric]
    stream = stream_word(setting_row.get("split"))
    baseline = rows.iloc[0]["baseline"]
    lines = []
    for _, row in rows.iterrows():
        lines.append(
            [
                row["method"],
                f"{100 * row['difference']:+.1f}",
                f"[{100 * row['ci_questions_low']:+.1f}, {100 * row['ci_questions_high']:+.1f}]",
                f"[{100 * row['ci_streams_low']:+.1f}, {100 * row['ci_streams_high']:+.1f}]",
                str(row["n_streams"]),
                str(row["n_questions"]),
            ]
        )
    header = [
        "Method",
        f"{label} − {baseline} (points)",
        "95% CI (questions)",
        "95% CI (streams and questions)",
        "Streams",
        "Questions",
    ]
    text = (
        f"### Paired comparison with the best baseline ({baseline})\n\nDifference of {stream} {label} "
        f"(percentage points) to {baseline}, the baseline with the highest {stream} {label}, on the same "
        "streams and questions; 95% intervals by a paired bootstrap over the questions of each stream, and "
        "over the streams and their questions."
    )
    if metric == "em":
        text += f" {EM_RULE}"
    return text + "\n\n" + markdown_table(header, lines)


def _full_table(group):
    columns = shown_columns(group, ["em_fraction", "f1_fraction"])
    header = ["Method", "LR"] + [COLUMN_LABELS[c] for c in columns] + ["Seeds"]
    lines = []
    for _, row in group.iterrows():
        lr = lr_text(row)
        lines.append(
            [row["method"], f"**{lr}**" if row["best"] else lr]
            + [format_value(c, row[f"{c}_mean"], row[f"{c}_std"]) for c in columns]
            + [str(row["n_seeds"])]
        )
    return markdown_table(header, lines)


def _best_table(best_here, metric, via_validation):
    best_columns = ["em_fraction", "f1_fraction"] + (["nll"] if best_here["nll_mean"].notna().any() else [])
    header = ["Method", "LR"] + [COLUMN_LABELS[c] for c in best_columns] + ["Seeds"]
    if via_validation:
        header.append(f"{METRIC_LABELS[metric]} on validation")
    header.append("Note")
    lines = []
    for _, row in best_here.iterrows():
        lr = "" if math.isnan(row["lr"]) else lr_text(row)
        line = (
            [row["method"], lr]
            + [format_value(c, row[f"{c}_mean"], row[f"{c}_std"]) for c in best_columns]
            + [str(row["n_seeds"])]
        )
        if via_validation:
            line.append(format_value(METRIC_COLUMNS[metric], row["selection_value"], None))
        line.append(row["note"])
        lines.append(line)
    return markdown_table(header, lines)


def render_markdown(table, best, metric, paired=None):
    """results.md: per setting the full method × lr table, the best-per-method table, and the
    paired comparison with the best baseline."""
    label = METRIC_LABELS[metric]
    via_validation = (best["selected_on"] == "validation").any()
    chosen_by = f"mean {label} on the validation runs" if via_validation else f"mean {label}"
    direction = "lowest" if metric == "nll" else "highest"
    sections = [
        f"# Online adaptation results\n\nBest lr of each method = {direction} {chosen_by} (bold in the "
        "full table); means within 1e-9 of each other tie, and a tie goes to the smaller lr. EM and F1 in %, "
        "NLL in nats per answer token; mean ± sample std over seeds."
    ]
    for setting_key, group in table.groupby("setting_key", sort=False):
        first = group.iloc[0]
        stream = stream_word(first.get("split"))
        sections.append(
            f"## {setting_title(first)}\n\nEvery method × lr on the {stream} stream. {EM_RULE}\n\n" + _full_table(group)
        )
        best_here = rows_of_setting(best, setting_key)
        sections.append(
            f"### Best lr per method ({stream})\n\n{EM_RULE}\n\n" + _best_table(best_here, metric, via_validation)
        )
        if paired is not None:
            sections.append(render_paired(paired, first, "em" if metric == "em" else "f1"))
    sections = [section for section in sections if section]
    return "\n\n".join(sections) + "\n"


def render_chart_png(best):
    """PNG bytes: per setting, each method's F1 (%) at its chosen lr with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = best[best["f1_fraction_mean"].notna()]
    settings = list(plotted.groupby("setting_key", sort=False))
    fig, axes = plt.subplots(
        len(settings) or 1,
        1,
        squeeze=False,
        figsize=(max(4.0, 1.3 * plotted["method"].nunique() + 1.5), 3.6 * max(1, len(settings))),
    )
    for ax, (_, group) in zip(axes[:, 0], settings):
        names = [f"{row['method']}\nlr={lr_text(row)}" for _, row in group.iterrows()]
        means = 100 * group["f1_fraction_mean"].to_numpy(dtype=float)
        stds = 100 * group["f1_fraction_std"].to_numpy(dtype=float)
        bars = ax.bar(names, means, yerr=np.nan_to_num(stds), capsize=4, color="#4c72b0")
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], padding=2, fontsize=8)
        ax.set_ylabel("F1 (%)")
        width = int(14 * fig.get_figwidth())
        title = f"{short_title(group.iloc[0])}: F1 at each method's chosen lr (error bars: std over seeds)"
        ax.set_title("\n".join(textwrap.wrap(title, width)), fontsize=8)
        ax.margins(y=0.15)
    if not settings:
        axes[0, 0].text(0.5, 0.5, "no F1 at the chosen lrs", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def settings_json(table):
    """settings.json's text: each setting's label and its full recorded options."""
    entries = [
        {"setting": setting_title(group.iloc[0]), "options": json.loads(key)}
        for key, group in table.groupby("setting_key", sort=False)
    ]
    return json.dumps(entries, indent=1) + "\n"
