"""Online adaptation and QA scoring shared by the entry points and the tiny world's report.

Answer generation, QA scoring (evaluate_qa), the optimisers (make_optimizer), weighted online
adaptation on a document stream (weighted_train) and light QA tuning (light_tune).
"""
import math
import re

import torch
from tqdm.auto import tqdm

from util import (UsageError, answer_nll, exact_match, f1_score, restore_parameters, snapshot_parameters,
                  weighted_lm_loss)

# Diverse beam search for top-K evaluation (README: "Online adaptation evaluation")
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
    max_f1 (over top-K), f1s (F1 of each top-K prediction, space-separated), nll (answer NLL,
    when `ppl` is among the modes).
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
                             f1=f1s[0], max_f1=max(f1s), f1s=" ".join(f"{f:.4f}" for f in f1s),
                             nll=example_nll))
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


# ---------------------------------------------------------------------------------------------
# Online adaptation: fine-tune the base model on a stream of documents with per-token weights

OPTIMIZERS = ("adam", "sgd", "adafactor")


def make_optimizer(name, parameters, lr):
    """Adam, SGD or Adafactor (fixed `lr`: no relative step or parameter scaling)."""
    name = str(name).lower()
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    raise UsageError(f"optimizer={name} is unknown; use one of {', '.join(OPTIMIZERS)}")


def weighted_train(base_model, weight_model, texts, collator, device, optimizer="adam", lr=1e-4,
                   batch_size=1, grad_acc_steps=1, grad_clip_thresh=750.0, n_epochs=1, progress=True,
                   every_k_documents=None, callback=None, resume_state=None, save_state=None,
                   save_every_documents=None):
    """Fine-tune `base_model` in place on `texts` in order with util.weighted_lm_loss, the token
    weights coming from the frozen `weight_model` (computed without gradients).

    Documents are batched `batch_size` at a time and truncated to the collator's max_text_len;
    gradients are accumulated over `grad_acc_steps` batches, clipped to `grad_clip_thresh` and
    applied. With `every_k_documents` and `callback`, callback(n_documents_seen) runs after every
    k documents (and is the caller's place to evaluate along the stream).

    With `save_state` and `save_every_documents`, save_state(state) receives everything needed to
    continue exactly (model, optimiser, position, random state) after an optimiser step once at least
    that many documents have passed since the last save; passing such a state as `resume_state`
    continues from it. The stream stops at the first non-finite loss or gradient.

    Returns {"n_steps", "n_batches", "mean_loss", "diverged"}: diverged is None, or the document and
    the non-finite value at which the stream stopped.
    """
    parameters = [p for p in base_model.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, parameters, lr)
    weight_model.eval()
    base_model.train()
    opt.zero_grad(set_to_none=True)
    n_steps, n_batches, total_loss, documents_seen, saved_at = 0, 0, 0.0, 0, 0
    if resume_state is not None:
        base_model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        n_steps, n_batches, total_loss, documents_seen = (resume_state[k] for k in
                                                          ("n_steps", "n_batches", "total_loss", "documents_seen"))
        saved_at = documents_seen
        set_rng_state(resume_state["rng"])
    batches = [texts[i: i + batch_size] for i in range(0, len(texts), batch_size)]
    diverged = None

    def apply_step():
        norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip_thresh)
        if not torch.isfinite(norm):
            return norm.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return None

    bar = tqdm(total=len(batches) * n_epochs, initial=n_batches, desc="adapting", disable=not progress, leave=False)
    schedule = [batch for _ in range(n_epochs) for batch in batches]
    for batch_texts in schedule[n_batches:]:
        ids, mask = collator.encode_texts(batch_texts)
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            weights = weight_model(ids, mask).to(device)
        logits = base_model(input_ids=ids, attention_mask=mask).logits
        loss = weighted_lm_loss(logits, ids, mask, weights, collator.max_text_len)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            diverged = dict(document=documents_seen + 1, value=f"loss {loss_value}")
            break
        (loss / grad_acc_steps).backward()
        n_batches += 1
        total_loss += loss_value
        if n_batches % grad_acc_steps == 0:
            bad_norm = apply_step()
            if bad_norm is not None:
                diverged = dict(document=documents_seen + len(batch_texts), value=f"gradient norm {bad_norm}")
                break
            n_steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        previous, documents_seen = documents_seen, documents_seen + len(batch_texts)
        if callback and every_k_documents and documents_seen // every_k_documents > previous // every_k_documents:
            callback(documents_seen)
        if (save_state and save_every_documents and n_batches % grad_acc_steps == 0 and n_batches < len(schedule)
                and documents_seen - saved_at >= save_every_documents):
            save_state(dict(model=base_model.state_dict(), optimizer=opt.state_dict(), n_steps=n_steps,
                            n_batches=n_batches, total_loss=total_loss, documents_seen=documents_seen,
                            rng=get_rng_state()))
            saved_at = documents_seen
    if diverged is None and n_batches % grad_acc_steps:  # the stream's last, incomplete accumulation still counts
        bad_norm = apply_step()
        if bad_norm is not None:
            diverged = dict(document=documents_seen, value=f"gradient norm {bad_norm}")
        n_steps += 1
    if diverged is None and not all(torch.isfinite(p).all() for p in parameters):
        diverged = dict(document=documents_seen, value="a non-finite weight")
    bar.close()
    base_model.eval()
    return dict(n_steps=n_steps, n_batches=n_batches, mean_loss=total_loss / max(n_batches, 1), diverged=diverged)


def get_rng_state():
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Light QA tuning after adaptation (the "+qa_tune" baseline)

LT_METRICS = ("em", "f1", "max_f1", "nll")


def light_tune(model, tokenizer, train_examples, val_examples, collator, device, lr=2.5e-5, batch_size=16,
               val_steps=50, patience=3, stopping_metric="max_f1", max_epochs=1, eval_modes=("em",),
               eval_batch_size=16, max_new_tokens=16, seed=0, progress=True):
    """Adam on the QA loss of `train_examples` (shuffled with `seed`), validating on
    `val_examples` before training and every `val_steps` steps; stops when `stopping_metric` has
    not improved for `patience` validations in a row (or after `max_epochs`) and restores the
    best state. nll counts lower-is-better, the others higher-is-better.

    Returns the validations: [{"step", "em", "f1", "max_f1", "nll", "n_questions"}, ...].
    """
    import random

    if stopping_metric not in LT_METRICS:
        raise UsageError(f"lt_stopping_metric={stopping_metric} is unknown; use one of {', '.join(LT_METRICS)}")
    if stopping_metric == "nll":
        eval_modes = (*eval_modes, "ppl")
    elif parse_eval_modes(eval_modes)[0] is None:
        eval_modes = (*eval_modes, "em")
    sign = -1.0 if stopping_metric == "nll" else 1.0
    history = []

    def validate(step):
        _, summary = evaluate_qa(model, tokenizer, val_examples, collator, device, eval_modes,
                                 eval_batch_size, max_new_tokens, desc="light-tune val", progress=progress)
        history.append(dict(step=step, **summary))
        return sign * summary[stopping_metric]

    def shuffled_batches():
        rng = random.Random(seed)
        for _ in range(max_epochs):
            order = list(train_examples)
            rng.shuffle(order)
            for start in range(0, len(order), batch_size):
                yield order[start: start + batch_size]

    best_score, best_state = validate(0), snapshot_parameters(model, "cpu")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    bad_validations = 0
    bar = tqdm(desc="light-tuning", disable=not progress, leave=False)
    for step, examples in enumerate(shuffled_batches(), start=1):
        model.train()
        batch = collator(examples)
        logits = model(input_ids=batch["qa_ids"].to(device), attention_mask=batch["qa_mask"].to(device)).logits
        loss = answer_nll(logits, batch["qa_labels"].to(device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % val_steps:
            continue
        score = validate(step)
        if score > best_score:
            best_score, best_state, bad_validations = score, snapshot_parameters(model, "cpu"), 0
        else:
            bad_validations += 1
            if bad_validations >= patience:
                break
    bar.close()
    restore_parameters(model, best_state)
    model.eval()
    return history
