"""Where a document's answers are: character spans of answers, the document tokens they cover, and
collated batches that carry those token masks (for the answer-token weight share and the oracle)."""

import re

import torch


def span_token_mask(tokenizer, text, spans, max_text_len):
    """Bool per token of `text` (its first max_text_len, as the collator cuts it): whether the
    token overlaps any of the character spans [start, end) in `spans`. Needs a fast tokenizer."""
    offsets = tokenizer(text, return_offsets_mapping=True, verbose=False)["offset_mapping"][:max_text_len]
    return torch.tensor(
        [any(token_end > start and token_start < end for start, end in spans) for token_start, token_end in offsets],
        dtype=torch.bool,
    )


def answer_char_spans(example):
    """Character spans of the example's answer in its document: the dataset's own spans when it
    has them (Example.extra answer_spans "start:end;...", else answer_start/answer_end, as the tiny
    world gives), else every occurrence of the answer string in the text (none when it does not occur)."""
    spans = str(example.extra.get("answer_spans") or "")
    if spans:
        return [tuple(int(x) for x in span.split(":")) for span in spans.split(";")]
    try:
        return [(int(example.extra["answer_start"]), int(example.extra["answer_end"]))]
    except (KeyError, TypeError, ValueError):
        pass
    if not example.answer:
        return []
    return [(m.start(), m.end()) for m in re.finditer(re.escape(example.answer), example.text)]


def answer_token_mask(tokenizer, examples, max_text_len, width):
    """B x width bool: document tokens overlapping the answer's character spans
    (answer_char_spans), and B bool: whether the example has such a token. None when the
    tokenizer gives no offsets or no example has a span."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    has_span = torch.zeros(len(examples), dtype=torch.bool)
    for row, example in enumerate(examples):
        spans = answer_char_spans(example)
        if not spans:
            continue
        covered = span_token_mask(tokenizer, example.text, spans, max_text_len)
        mask[row, : len(covered)] = covered
        has_span[row] = covered.any()
    return (mask, has_span) if has_span.any() else None


def make_batch(collator, examples, device):
    """Collated tensors of `examples` on `device`, plus `answer_mask`/`has_span` where available."""
    batch = collator(examples)
    tensors = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    spans = answer_token_mask(collator.tokenizer, examples, collator.max_text_len, batch["text_ids"].shape[1])
    if spans is not None:
        tensors["answer_mask"], tensors["has_span"] = (t.to(device) for t in spans)
    tensors["examples"] = examples
    return tensors


def document_batch(collator, groups, device):
    """A batch of whole documents, each given as the list of its Examples (collated by the first),
    whose `answer_mask` marks the tokens of any of the document's answers (absent when unknown)."""
    batch = make_batch(collator, [group[0] for group in groups], device)
    width = batch["text_ids"].shape[1]
    spans = [answer_token_mask(collator.tokenizer, group, collator.max_text_len, width) for group in groups]
    for key in ("answer_mask", "has_span"):  # make_batch's are the first question's only
        batch.pop(key, None)
    if all(span is not None for span in spans):
        batch["answer_mask"] = torch.stack([span[0].any(0) for span in spans]).to(device)
        batch["has_span"] = torch.stack([span[1].any() for span in spans]).to(device)
    return batch
