"""Where the weight goes: answer-token masks, the share of weight on answer tokens, renderings.

Batches with answer-token masks, the weight on answer tokens, and renderings of per-token weights
(HTML page and PNG chart).
"""

import html
from pathlib import Path

import torch

from exp_datasets.answer_spans import document_batch
from plumbing import files


def answer_mass(weights, batch):
    """(weight on answer tokens, weight on all tokens, answer tokens, tokens) over the batch's
    documents with an answer span, counting the positions whose weight enters the loss (1..T-1)."""
    if "answer_mask" not in batch:
        return None
    rows = batch["has_span"]
    real = batch["text_mask"][rows, 1:].bool()
    answer = batch["answer_mask"][rows, 1:] & real
    w = weights[rows, 1:].detach().double()
    return (w[answer].sum().item(), w[real].sum().item(), answer.sum().item(), real.sum().item())


# ---------------------------------------------------------------------------------------------
# Rendering weights


def render_weights(
    tokenizer,
    input_ids,
    weights,
    path_html,
    path_png,
    attention_mask=None,
    highlight=None,
    titles=None,
    heading="Token weights",
):
    """Show per-token weights of documents: an HTML page with each token shaded by its weight
    (hover shows the value) and a PNG of the same shaded text (render_text_png). `highlight` (B x T bool,
    optional) marks tokens to outline, e.g. answer tokens; `titles` names the documents."""
    input_ids = torch.as_tensor(input_ids).cpu()
    weights = torch.as_tensor(weights).detach().cpu().double()
    mask = (
        torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is None
        else torch.as_tensor(attention_mask).cpu().bool()
    )
    docs = []
    for row in range(input_ids.shape[0]):
        positions = mask[row].nonzero().flatten().tolist()
        tokens = [tokenizer.decode([int(input_ids[row, p])]) for p in positions]
        values = [float(weights[row, p]) for p in positions]
        marked = [bool(highlight[row, p]) if highlight is not None else False for p in positions]
        title = titles[row] if titles else f"Document {row}"
        docs.append((title, tokens, values, marked))

    every = [v for _, _, values, _ in docs for v in values] or [0.0]
    low, high = min(every), max(every)
    # shade by the weight's place in this page's range, so that small differences stay visible
    spread = high - low if high - low > 1e-6 * max(abs(high), 1e-12) else None

    def shade(value):
        return 0.5 if spread is None else 0.1 + 0.8 * (value - low) / spread

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(heading)}</title><style>",
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}",
        ".doc{white-space:pre-wrap;line-height:1.9;border:1px solid #ccc;padding:.6em;margin-bottom:1.2em}",
        ".tok{border-radius:3px}.ans{outline:2px solid #1a5fb4}",
        "</style></head><body>",
        f"<h1>{html.escape(heading)}</h1>",
        f"<p>Shading: from the smallest weight on this page ({low:.4g}, lightest) to the largest ({high:.4g}, "
        f"darkest); hover a token for its weight.{' Outlined: answer tokens.' if highlight is not None else ''}</p>",
    ]
    for title, tokens, values, marked in docs:
        mean = sum(values) / max(len(values), 1)
        parts.append(
            f"<h2>{html.escape(str(title))}</h2><p>mean weight {mean:.4g}, max {max(values, default=0):.4g}</p>"
        )
        spans = [
            f"<span class='tok{' ans' if m else ''}' style='background:rgba(230,80,0,{shade(v):.3f})' "
            f"title='{v:.4g}'>{html.escape(t)}</span>"
            for t, v, m in zip(tokens, values, marked)
        ]
        parts.append(f"<div class='doc'>{''.join(spans)}</div>")
    parts.append("</body></html>")
    files.atomic_write_text("\n".join(parts), path_html)

    render_text_png(
        docs, shade, low, high, path_png, heading + (" (outlined: answer tokens)" if highlight is not None else "")
    )


# The PNG sets each document as wrapped monospaced text, every token on a background shaded by its
# weight: monospaced glyphs have one advance width, so a token's box is its characters' columns
PNG_COLUMNS = 110  # characters per line
PNG_FONT_SIZE = 9  # points
MONOSPACE_ADVANCE = 0.6021  # DejaVu Sans Mono's advance width, in ems
PNG_LINE_HEIGHT = 1.55  # lines, in font sizes


def wrap_tokens(tokens, columns=PNG_COLUMNS):
    """Lay out tokens like text: (line, column, shown text) per token, a line broken before a token that
    would overrun `columns` (a longer token is cut) and after a newline; newlines show as ↵, tabs as a space."""
    placed, line, column = [], 0, 0
    for token in tokens:
        shown = token.replace("\n", "↵").replace("\t", " ").replace("\r", "") or "·"
        shown = shown[:columns]
        if column + len(shown) > columns:
            line, column = line + 1, 0
        placed.append((line, column, shown))
        column += len(shown)
        if "\n" in token:
            line, column = line + 1, 0
    return placed


def render_text_png(docs, shade, low, high, path_png, heading):
    """Each document of `docs` (title, tokens, weights, answer marks) as wrapped text whose token
    backgrounds are shaded by weight (the HTML page's colours), under its title and weight range."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    layouts = [wrap_tokens(tokens) for _, tokens, _, _ in docs]
    char_width = MONOSPACE_ADVANCE * PNG_FONT_SIZE / 72  # inches
    line_height = PNG_LINE_HEIGHT * PNG_FONT_SIZE / 72
    title_lines = 2.2
    lines = [max((line for line, _, _ in layout), default=0) + 1 + title_lines for layout in layouts]
    width, height = PNG_COLUMNS * char_width + 0.4, sum(lines) * line_height + 0.7
    figure = Figure(figsize=(width, height))
    axis = figure.add_axes((0.2 / width, 0.1 / height, PNG_COLUMNS * char_width / width, 1 - 0.7 / height))
    total = sum(lines)
    axis.set_xlim(0, PNG_COLUMNS)
    axis.set_ylim(total, 0)  # one unit per line, from the top
    axis.set_axis_off()
    top = 0.0
    for (title, _, values, marked), layout, n_lines in zip(docs, layouts, lines):
        title = str(title)
        mean = sum(values) / max(len(values), 1)
        axis.text(
            0,
            top + 0.8,
            title if len(title) <= PNG_COLUMNS else title[: PNG_COLUMNS - 1] + "…",
            fontsize=PNG_FONT_SIZE,
            fontweight="bold",
            va="center",
        )
        axis.text(
            0,
            top + 1.7,
            f"mean weight {mean:.4g}, max {max(values, default=0):.4g}",
            fontsize=PNG_FONT_SIZE - 1,
            color="#555555",
            va="center",
        )
        body = top + title_lines
        for (line, column, shown), value, answer in zip(layout, values, marked):
            axis.add_patch(
                Rectangle(
                    (column, body + line + 0.05),
                    len(shown),
                    0.9,
                    linewidth=1.2 if answer else 0,
                    facecolor=(230 / 255, 80 / 255, 0, shade(value)),
                    edgecolor="#1a5fb4" if answer else "none",
                )
            )
        rows = {}
        for line, column, shown in layout:
            text = rows.setdefault(line, [])
            text.append(" " * (column - len("".join(text))) + shown)
        for line, parts in rows.items():
            axis.text(
                0,
                body + line + 0.5,
                "".join(parts),
                family="DejaVu Sans Mono",
                fontsize=PNG_FONT_SIZE,
                va="center",
                ha="left",
            )
        top += n_lines
    figure.suptitle(
        f"{heading}; shading from {low:.4g} (lightest) to {high:.4g} (darkest)",
        fontsize=PNG_FONT_SIZE + 1,
        y=1 - 0.15 / height,
        va="top",
    )
    with files.atomic_path(path_png) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def render_document_weights(tokenizer, collator, groups, weigh, device, stem, heading="Token weights"):
    """Render to `stem`.html/.png the weights `weigh(batch)` gives documents, each given as the
    list of its Examples: its answer tokens marked, its questions and answers as the title."""
    batch = document_batch(collator, groups, device)
    with torch.no_grad():
        weights = weigh(batch)
    titles = ["   ".join(f"Q: {e.question}  A: {e.answer}" for e in group) for group in groups]
    render_weights(
        tokenizer,
        batch["text_ids"],
        weights,
        Path(stem).with_suffix(".html"),
        Path(stem).with_suffix(".png"),
        attention_mask=batch["text_mask"],
        highlight=batch.get("answer_mask"),
        titles=titles,
        heading=heading,
    )
