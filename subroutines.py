"""Subroutines shared by the entry points: answer generation and QA scoring."""
import re

import torch
from tqdm.auto import tqdm

from util import UsageError, answer_nll, exact_match, f1_score

# Diverse beam search of SPEC §6 for top-K evaluation
DIVERSE_BEAMS = dict(num_beams=12, num_beam_groups=4, diversity_penalty=10.0)


def parse_eval_modes(modes):
    """`em` (greedy top-1), `em<K>` (top-K by diverse beam search, e.g. em4) and `ppl` (answer NLL).

    Returns (top_k or None, with_nll). top_k is 1 for plain `em`.
    """
    top_k, with_nll = None, False
    for mode in modes:
        match = re.fullmatch(r"em(\d*)", str(mode))
        if str(mode) == "ppl":
            with_nll = True
        elif match:
            top_k = max(top_k or 1, int(match.group(1) or 1))
        else:
            raise UsageError(f"eval mode {mode!r} is unknown; use em, em<K> (e.g. em4) or ppl")
    if top_k and top_k > DIVERSE_BEAMS["num_beams"]:
        raise UsageError(f"eval=em{top_k}: top-K cannot exceed num_beams={DIVERSE_BEAMS['num_beams']}")
    return top_k, with_nll


@torch.no_grad()
def generate_answers(model, tokenizer, gen_ids, gen_mask, max_new_tokens=16, top_k=1):
    """Continuations of left-padded question prompts: a list (one per prompt) of `top_k` strings.

    top_k=1 is greedy decoding; more uses diverse beam search and keeps the best `top_k` beams.
    Each answer is cut at the first line break, since a QA model may run on into a new line.
    """
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if top_k > 1:
        kwargs.update(DIVERSE_BEAMS, num_return_sequences=top_k)
    output = model.generate(input_ids=gen_ids, attention_mask=gen_mask, **kwargs)
    texts = tokenizer.batch_decode(output[:, gen_ids.shape[1]:], skip_special_tokens=True)
    texts = [t.strip().split("\n")[0].strip() for t in texts]
    return [texts[i: i + top_k] for i in range(0, len(texts), top_k)]


@torch.no_grad()
def evaluate_qa(model, tokenizer, examples, collator, device, eval_modes=("em",), batch_size=16,
                max_new_tokens=16, desc="QA eval", progress=True):
    """Score `examples` with the model: per-question rows and a summary of means.

    rows: question, answer, prediction (top-1), predictions (top-K, ' || '-joined), em, f1,
    max_f1 (over top-K), nll (answer NLL, when `ppl` is among the modes).
    """
    top_k, with_nll = parse_eval_modes(eval_modes)
    was_training = model.training
    model.eval()
    rows = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, disable=not progress, leave=False):
        batch = collator(examples[start: start + batch_size])
        nll = [None] * len(batch["questions"])
        if with_nll:
            logits = model(input_ids=batch["qa_ids"].to(device), attention_mask=batch["qa_mask"].to(device)).logits
            nll = answer_nll(logits, batch["qa_labels"].to(device), reduction="none").tolist()
        predictions = [[""]] * len(batch["questions"])
        if top_k:
            predictions = generate_answers(model, tokenizer, batch["gen_ids"].to(device),
                                           batch["gen_mask"].to(device), max_new_tokens, top_k)
        for question, answer, preds, example_nll in zip(batch["questions"], batch["answers"], predictions, nll):
            f1s = [f1_score(p, answer) for p in preds]
            rows.append(dict(question=question, answer=answer, prediction=preds[0],
                             predictions=" || ".join(preds), em=exact_match(preds[0], answer),
                             f1=f1s[0], max_f1=max(f1s), nll=example_nll))
    model.train(was_training)
    return rows, summarize(rows, with_generation=bool(top_k), with_nll=with_nll)


def summarize(rows, with_generation=True, with_nll=False):
    """Means over per-question rows; metrics that were not computed are None."""
    n = max(len(rows), 1)
    mean = lambda key: sum(r[key] for r in rows) / n  # noqa: E731
    return dict(em=mean("em") if with_generation else None,
                f1=mean("f1") if with_generation else None,
                max_f1=mean("max_f1") if with_generation else None,
                nll=mean("nll") if with_nll else None,
                n_questions=len(rows))
