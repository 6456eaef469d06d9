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
    (hover shows the value) and a PNG bar chart per document. `highlight` (B x T bool, optional)
    marks tokens to outline, e.g. answer tokens; `titles` names the documents."""
    from matplotlib.figure import Figure

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

    figure = Figure(figsize=(12, 2.2 * len(docs) + 0.8))
    axes = figure.subplots(len(docs), 1, squeeze=False)[:, 0]
    for axis, (title, tokens, values, marked) in zip(axes, docs):
        # one line per token as a single collection: far cheaper to draw than bar patches
        axis.vlines(
            range(len(values)),
            0,
            values,
            colors=["#1a5fb4" if m else "#e65000" for m in marked],
            linewidth=max(0.5, min(4.0, 600 / max(len(values), 1))),
        )
        title = str(title)
        axis.set_title(title if len(title) <= 130 else title[:129] + "…", fontsize=9, loc="left")
        axis.set_ylabel("weight")
        axis.set_xlim(-1, max(len(values), 1))
        axis.set_ylim(0, max(high, 1e-12) * 1.05)
        if len(tokens) <= 80:
            axis.set_xticks(range(len(tokens)), [t.strip() or "·" for t in tokens], rotation=90, fontsize=6)
        else:
            axis.set_xlabel("token position")
    figure.suptitle(heading + (" (blue: answer tokens)" if highlight is not None else ""))
    figure.subplots_adjust(hspace=0.7 if any(len(d[1]) <= 80 for d in docs) else 0.55)
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
