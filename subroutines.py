"""Online adaptation and QA scoring shared by the entry points and the tiny world's report.

Answer generation (diverse beam search or greedy), QA scoring (evaluate_qa), the optimisers
(make_optimizer), weighted online adaptation on a document stream (weighted_train), and the QA
fine-tuning loop (qa_tuning_loop) of light QA tuning (light_tune) and train_qa.py.
"""

import itertools
import math
import random
import re
from dataclasses import dataclass
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from exp_datasets.collate import model_positions
from plumbing.environment import restore_rng_state, rng_state
from plumbing.errors import UsageError
from plumbing.schemas import DECODINGS, LT_METRICS, OPTIMIZERS
from util import answer_nll, exact_match, f1_score, weighted_lm_loss


@dataclass(frozen=True)
class Decoding:
    """How answers are generated. beam: the reference's diverse beam search (num_beams beams in
    num_beam_groups groups, diversity_penalty between groups, early stopping), the best
    sequences returned; greedy: one greedy continuation (top-1 only)."""

    method: str = "beam"
    num_beams: int = 12
    num_beam_groups: int = 4
    diversity_penalty: float = 10.0
    max_new_tokens: int = 16
    first_line: bool = False  # cut each answer at its first line break

    @classmethod
    def from_config(cls, cfg):
        return cls(
            method=str(cfg.decoding),
            num_beams=int(cfg.num_beams),
            num_beam_groups=int(cfg.num_beam_groups),
            diversity_penalty=float(cfg.diversity_penalty),
            max_new_tokens=int(cfg.max_new_tokens),
            first_line=bool(cfg.answer_first_line),
        )

    def beams_for(self, top_k):
        """Beams for top-K: the configured number, raised (as the reference does) to the next multiple
        of num_beam_groups above K when K needs more."""
        return max(self.num_beams, top_k - top_k % self.num_beam_groups + self.num_beam_groups)

    def check(self, top_k):
        if self.method not in DECODINGS:
            raise UsageError(f"decoding={self.method} is unknown; use one of {', '.join(DECODINGS)}")
        if self.method == "greedy" and top_k and top_k > 1:
            raise UsageError(f"eval=em{top_k} needs decoding=beam (greedy decoding gives one answer)")
        if self.method == "beam" and self.num_beams % self.num_beam_groups:
            raise UsageError(f"num_beams={self.num_beams} must be a multiple of num_beam_groups={self.num_beam_groups}")


GREEDY = Decoding(method="greedy")


def parse_eval_modes(modes):
    """`em` (top-1), `em<K>` (top-K, e.g. em4) and `ppl` (answer NLL).

    Returns (top_k or None, with_nll). top_k is 1 for plain `em`, else the largest K asked for.
    """
    top_k, with_nll = None, False
    for mode in modes:
        match = re.fullmatch(r"em(\d*)", str(mode))
        if str(mode) == "ppl":
            with_nll = True
        elif match and match.group(1) != "0":
            top_k = max(top_k or 1, int(match.group(1) or 1))
        else:
            raise UsageError(f"eval mode {mode!r} is unknown; use em, em<K> (e.g. em4) or ppl")
    return top_k, with_nll


@torch.no_grad()
def generate_answers(model, tokenizer, gen_ids, gen_mask, decoding=GREEDY, top_k=1):
    """Continuations of left-padded question prompts: a list (one per prompt) of `top_k` strings,
    best first. A prompt longer than the model's positions allow (with the answer's) keeps its end.
    Diverse beam search runs diverse_beam.search (generate's answers, batched) where the model
    allows it, else generate itself (as does plain beam search: one beam group).
    """
    import diverse_beam  # transformers loads here, not when an entry point starts

    positions = model_positions(model)
    if positions is not None and gen_ids.shape[1] + decoding.max_new_tokens > positions:
        keep = positions - decoding.max_new_tokens
        gen_ids, gen_mask = gen_ids[:, -keep:], gen_mask[:, -keep:]
    if decoding.method == "beam" and decoding.num_beam_groups > 1 and diverse_beam.supports(model):
        sequences = diverse_beam.search(
            model,
            gen_ids,
            gen_mask,
            decoding.beams_for(top_k),
            decoding.num_beam_groups,
            decoding.diversity_penalty,
            decoding.max_new_tokens,
            top_k,
            tokenizer.pad_token_id,
        )
        sequences = [s for question in sequences for s in question]
    else:
        sequences = generate(model, tokenizer, gen_ids, gen_mask, decoding, top_k)[:, gen_ids.shape[1] :]
    texts = [t.strip() for t in tokenizer.batch_decode(sequences, skip_special_tokens=True)]
    if decoding.first_line:
        texts = [t.split("\n")[0].strip() for t in texts]
    return [texts[i : i + top_k] for i in range(0, len(texts), top_k)]


def generate(model, tokenizer, gen_ids, gen_mask, decoding, top_k):
    """transformers' generate with the decoding's arguments (prompts and continuations)."""
    kwargs = dict(
        max_new_tokens=decoding.max_new_tokens, do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id
    )
    if decoding.method == "beam":
        kwargs.update(
            num_beams=decoding.beams_for(top_k),
            num_beam_groups=decoding.num_beam_groups,
            diversity_penalty=decoding.diversity_penalty,
            early_stopping=True,
            num_return_sequences=top_k,
        )
    if decoding.method == "beam" and gen_ids.shape[1] > 1:
        kwargs["past_key_values"] = beam_prompt_cache(model, gen_ids, gen_mask, kwargs["num_beams"])
    return model.generate(input_ids=gen_ids, attention_mask=gen_mask, **kwargs)


def beam_prompt_cache(model, gen_ids, gen_mask, num_beams):
    """The key/value cache of every prompt but its last token, computed once per question and
    repeated for its beams: beam search would otherwise encode each prompt once per beam. The
    positions are those generate derives from the attention mask (left padding)."""
    positions = (gen_mask.long().cumsum(-1) - 1).masked_fill(gen_mask == 0, 1)
    cache = model(
        input_ids=gen_ids[:, :-1], attention_mask=gen_mask[:, :-1], position_ids=positions[:, :-1], use_cache=True
    ).past_key_values
    cache.batch_repeat_interleave(num_beams)
    return cache


def score_predictions(predictions, golds):
    """Metrics of one question's top-K predictions (best first). Each prediction scores against its
    best-matching gold alternative; em/f1: the first prediction; max_f1: the best of the K;
    em_at_k: 1 if any of the K matches; f1_at_k: the mean F1 of the K (the reference's top-K)."""
    ems = [max(exact_match(p, gold) for gold in golds) for p in predictions]
    f1s = [max(f1_score(p, gold) for gold in golds) for p in predictions]
    return dict(em=ems[0], f1=f1s[0], max_f1=max(f1s), em_at_k=max(ems), f1_at_k=sum(f1s) / len(f1s), f1s=f1s)


@torch.no_grad()
def evaluate_qa(
    model,
    tokenizer,
    examples,
    collator,
    device,
    eval_modes=("em",),
    batch_size=16,
    decoding=GREEDY,
    desc="QA eval",
    progress=True,
):
    """Score `examples` with the model: per-question rows and a summary of means.

    Each prediction is scored against every gold alternative of its question (the best counts),
    or the training target alone when the collator's answer_match is "shortest".
    rows: question, answer (training target), golds (' | '-joined), prediction (top-1),
    predictions (top-K, ' || '-joined), em and f1 (top-1), max_f1 (best of the K), em_at_k (1 if
    any of the K matches), f1_at_k (mean F1 of the K), f1s, nll (mean over the question's answer
    tokens) and n_answer_tokens, when `ppl` is among the modes.
    """
    top_k, with_nll = parse_eval_modes(eval_modes)
    decoding.check(top_k)
    was_training = model.training
    model.eval()
    # Questions of similar length share a batch (less padding to encode and attend over); the rows
    # come back in the order of `examples`.
    lengths = [len(ids) for ids in tokenizer([e.question for e in examples])["input_ids"]] if examples else []
    order = sorted(range(len(examples)), key=lengths.__getitem__)
    by_length = [examples[i] for i in order]
    rows = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, disable=not progress, leave=False):
        batch = collator(by_length[start : start + batch_size])
        size = len(batch["questions"])
        nll, n_tokens = [None] * size, [None] * size
        if with_nll:
            logits = model(input_ids=batch["qa_ids"].to(device), attention_mask=batch["qa_mask"].to(device)).logits
            nll = answer_nll(logits, batch["qa_labels"].to(device), reduction="none").tolist()
            n_tokens = (batch["qa_labels"][:, 1:] != -100).sum(1).tolist()
        predictions = [[""]] * size
        if top_k:
            predictions = generate_answers(
                model, tokenizer, batch["gen_ids"].to(device), batch["gen_mask"].to(device), decoding, top_k
            )
        for question, answer, golds, preds, example_nll, count in zip(
            batch["questions"], batch["answers"], batch["golds"], predictions, nll, n_tokens
        ):
            scores = score_predictions(preds, golds)
            scores["f1s"] = " ".join(f"{f:.4f}" for f in scores["f1s"])
            rows.append(
                dict(
                    question=question,
                    answer=answer,
                    golds=" | ".join(golds),
                    prediction=preds[0],
                    predictions=" || ".join(preds),
                    **scores,
                    nll=example_nll,
                    n_answer_tokens=count,
                )
            )
    model.train(was_training)
    rows = [row for _, row in sorted(zip(order, rows), key=lambda pair: pair[0])]
    return rows, summarize(rows, top_k=top_k, with_nll=with_nll)


def summarize(rows, top_k=1, with_nll=False):
    """Means over per-question rows; metrics that were not computed are None. em and f1 are always
    top-1; em_at_k (any of K) and f1_at_k (mean over K) are the reference's top-K metrics, given
    when K > 1. nll is the mean over all answer tokens (a question weighs by its answer's length)."""
    n = max(len(rows), 1)
    mean = lambda key: sum(r[key] for r in rows) / n  # noqa: E731
    with_k = bool(top_k and top_k > 1)
    nll = None
    if with_nll:
        tokens = sum(r["n_answer_tokens"] for r in rows)
        nll = sum(r["nll"] * r["n_answer_tokens"] for r in rows) / max(tokens, 1)
    return dict(
        em=mean("em") if top_k else None,
        f1=mean("f1") if top_k else None,
        max_f1=mean("max_f1") if top_k else None,
        top_k=top_k,
        em_at_k=mean("em_at_k") if with_k else None,
        f1_at_k=mean("f1_at_k") if with_k else None,
        nll=nll,
        n_questions=len(rows),
    )


# ---------------------------------------------------------------------------------------------
# Online adaptation: fine-tune the base model on a stream of documents with per-token weights


def check_optimizer(name):
    """The optimizer's name is known and its package importable (adam8bit: bitsandbytes)."""
    import importlib.util

    name = str(name).lower()
    if name not in OPTIMIZERS:
        raise UsageError(f"optimizer={name} is unknown; use one of {', '.join(OPTIMIZERS)}")
    if name == "adam8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(
            "optimizer=adam8bit needs the bitsandbytes package; pip install bitsandbytes, or use optimizer=adafactor"
        )


def make_optimizer(name, parameters, lr):
    """Adam, SGD, Adafactor (fixed `lr`: no relative step or parameter scaling) or 8-bit Adam
    (bitsandbytes: Adam's two moments in 1 byte each instead of 4, for big base models)."""
    name = str(name).lower()
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    if name == "adam8bit":
        check_optimizer(name)
        import bitsandbytes

        return bitsandbytes.optim.Adam8bit(parameters, lr=lr)
    raise UsageError(f"optimizer={name} is unknown; use one of {', '.join(OPTIMIZERS)}")


@dataclass(frozen=True)
class AdaptationSettings:
    """How the base model is fine-tuned on a stream (conf/task/eval.yaml's keys of the same names)."""

    optimizer: str = "adam"
    lr: float = 1e-4
    batch_size: int = 1
    grad_acc_steps: int = 1
    grad_clip_thresh: float = 750.0
    n_epochs: int = 1
    every_k_documents: Optional[int] = None  # run the callback after every k documents
    save_every_documents: Optional[int] = None  # documents between saves of the resumable state

    @classmethod
    def from_config(cls, cfg) -> "AdaptationSettings":
        return cls(
            optimizer=cfg.optimizer,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            grad_acc_steps=cfg.grad_acc_steps,
            grad_clip_thresh=cfg.grad_clip_thresh,
            n_epochs=cfg.n_epochs,
            every_k_documents=cfg.get("eval_every_k"),
            save_every_documents=cfg.get("save_state_every"),
        )


def weighted_train(
    base_model,
    weight_model,
    texts: List[str],
    collator,
    device,
    settings: AdaptationSettings = AdaptationSettings(),
    progress: bool = True,
    callback=None,
    resume_state=None,
    save_state=None,
) -> dict:
    """Fine-tune `base_model` in place on `texts` in order with util.weighted_lm_loss, the token
    weights coming from the frozen `weight_model` (computed without gradients).

    Documents are batched `settings.batch_size` at a time and truncated to the collator's max_text_len;
    gradients are accumulated over `settings.grad_acc_steps` batches, clipped to `settings.grad_clip_thresh` and
    applied. With `settings.every_k_documents` and `callback`, callback(n_documents_seen) runs after every
    k documents (and is the caller's place to evaluate along the stream).

    With `save_state` and `settings.save_every_documents`, save_state(state) receives everything needed to
    continue exactly (model, optimiser, position, random state) after an optimiser step once at least
    that many documents have passed since the last save; passing such a state as `resume_state`
    continues from it. The stream stops at the first non-finite loss or gradient.

    Returns {"n_steps", "n_batches", "mean_loss", "diverged"}: diverged is None, or the document and
    the non-finite value at which the stream stopped, and whether that came before any update
    (`before_any_update`: then the model and data, not the learning rate, are the cause).
    """
    parameters = [p for p in base_model.parameters() if p.requires_grad]
    opt = make_optimizer(settings.optimizer, parameters, settings.lr)
    weight_model.eval()
    base_model.train()
    opt.zero_grad(set_to_none=True)
    n_steps, n_batches, total_loss, documents_seen, saved_at = 0, 0, 0.0, 0, 0
    if resume_state is not None:
        base_model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        n_steps, n_batches, total_loss, documents_seen = (
            resume_state[k] for k in ("n_steps", "n_batches", "total_loss", "documents_seen")
        )
        saved_at = documents_seen
        restore_rng_state(resume_state["rng"])
    batches = [texts[i : i + settings.batch_size] for i in range(0, len(texts), settings.batch_size)]
    diverged = None

    def apply_step():
        norm = torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip_thresh)
        if not torch.isfinite(norm):
            return norm.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return None

    bar = tqdm(
        total=len(batches) * settings.n_epochs, initial=n_batches, desc="adapting", disable=not progress, leave=False
    )
    schedule = [batch for _ in range(settings.n_epochs) for batch in batches]
    for batch_texts in schedule[n_batches:]:
        ids, mask = collator.encode_texts(batch_texts)
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            weights = weight_model(ids, mask).to(device)
        logits = base_model(input_ids=ids, attention_mask=mask).logits
        loss = weighted_lm_loss(logits, ids, mask, weights, collator.max_text_len)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            diverged = dict(document=documents_seen + 1, value=f"loss {loss_value}", before_any_update=n_steps == 0)
            break
        (loss / settings.grad_acc_steps).backward()
        n_batches += 1
        total_loss += loss_value
        if n_batches % settings.grad_acc_steps == 0:
            bad_norm = apply_step()
            if bad_norm is not None:
                diverged = dict(
                    document=documents_seen + len(batch_texts),
                    value=f"gradient norm {bad_norm}",
                    before_any_update=n_steps == 0,
                )
                break
            n_steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        previous, documents_seen = documents_seen, documents_seen + len(batch_texts)
        every_k = settings.every_k_documents
        if callback and every_k and documents_seen // every_k > previous // every_k:
            callback(documents_seen)
        if (
            save_state
            and settings.save_every_documents
            and n_batches % settings.grad_acc_steps == 0
            and n_batches < len(schedule)
            and documents_seen - saved_at >= settings.save_every_documents
        ):
            save_state(
                dict(
                    model=base_model.state_dict(),
                    optimizer=opt.state_dict(),
                    n_steps=n_steps,
                    n_batches=n_batches,
                    total_loss=total_loss,
                    documents_seen=documents_seen,
                    rng=rng_state(),
                )
            )
            saved_at = documents_seen
    if (
        diverged is None and n_batches % settings.grad_acc_steps
    ):  # the stream's last, incomplete accumulation still counts
        bad_norm = apply_step()
        if bad_norm is not None:
            diverged = dict(document=documents_seen, value=f"gradient norm {bad_norm}", before_any_update=n_steps == 0)
        n_steps += 1
    if diverged is None and not all(torch.isfinite(p).all() for p in parameters):
        diverged = dict(document=documents_seen, value="a non-finite weight", before_any_update=False)
    bar.close()
    base_model.eval()
    return dict(n_steps=n_steps, n_batches=n_batches, mean_loss=total_loss / max(n_batches, 1), diverged=diverged)


# ---------------------------------------------------------------------------------------------
# Parameter snapshots: take the model's weights, try something, put them back


def snapshot_parameters(model, device=None):
    """Copies of the model's parameters, in the order of model.parameters(), on `device` (default:
    where each one is; "cpu" keeps a big model's copy off the accelerator)."""
    return [p.detach().clone() if device is None else p.detach().to(device, copy=True) for p in model.parameters()]


@torch.no_grad()
def restore_parameters(model, values):
    """Copy `values` (a snapshot_parameters list, or tensors of the same shapes in the same order)
    into the model's parameters in place."""
    parameters = list(model.parameters())
    if len(parameters) != len(values):
        raise ValueError(f"{len(values)} values for {len(parameters)} parameters")
    for p, value in zip(parameters, values):
        p.copy_(value)


# ---------------------------------------------------------------------------------------------
# QA fine-tuning: one loop for QA pre-tuning (train_qa.py) and light QA tuning after adaptation


def qa_loss(model, collator, examples, device):
    """Mean NLL over the answer tokens (EOS included when qa_eos) of a batch of QA pairs."""
    ids, mask, labels = collator.encode_qa([e.question for e in examples], [e.answer for e in examples])
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    return answer_nll(logits, labels.to(device))


def qa_tuning_loop(
    model,
    collator,
    train_examples,
    device,
    optimizer,
    validate,
    batch_size=16,
    grad_acc_steps=1,
    grad_clip_thresh=750.0,
    val_steps=16,
    max_steps=None,
    max_epochs=None,
    seed=0,
    progress=True,
    desc="QA tuning",
    start_step=0,
):
    """Fine-tune `model` on the QA loss of `train_examples` until `validate` says stop.

    Batches of `batch_size` pairs come from a fresh shuffle (generator seeded with `seed`) on each
    pass; every `grad_acc_steps` batches make one optimiser step, its gradient clipped to
    `grad_clip_thresh`. validate(step, epoch, train_loss) runs before training, every `val_steps`
    optimiser steps and after the last step, and returns True to stop. Training ends there, after
    `max_steps` steps or after `max_epochs` passes (None: no limit); a last incomplete group of
    batches still makes a step. The model is left in eval mode. Returns the number of steps.

    start_step > 0 continues a run whose model and optimiser are those after that step's
    validation: the batches it trained on are drawn again and skipped, so the rest come in the same
    order, and that validation is not repeated.
    """
    rng = random.Random(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    batches_per_epoch = math.ceil(len(train_examples) / batch_size)

    def batches():
        epoch = 0
        while max_epochs is None or epoch < max_epochs:
            epoch += 1
            order = rng.sample(train_examples, len(train_examples))
            for index in range(batches_per_epoch):
                yield epoch, order[index * batch_size : (index + 1) * batch_size]

    step, epoch, losses, validated = start_step, 0, [], True
    stream = batches()
    # fast-forward to where the run stopped; the epoch it stopped in is kept
    for epoch, _ in itertools.islice(stream, start_step * grad_acc_steps):  # noqa: B007
        pass
    stop = validate(0, 0, None) if start_step == 0 else False
    bar = tqdm(total=max_steps, initial=start_step, desc=desc, unit="step", disable=not progress, leave=False)
    model.train()
    while not stop and (max_steps is None or step < max_steps):
        group = []
        for item in stream:
            epoch = item[0]
            group.append(item[1])
            if len(group) == grad_acc_steps:
                break
        if not group:
            break
        for examples in group:
            loss = qa_loss(model, collator, examples, device)
            (loss / len(group)).backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip_thresh)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
        validated = step % val_steps == 0
        if validated:
            stop = validate(step, epoch, sum(losses) / len(losses))
            losses = []
            model.train()
    if not validated and losses:  # the final model is always scored
        validate(step, epoch, sum(losses) / len(losses))
    bar.close()
    model.eval()
    return step


def reference_stop(history, metric, patience):
    """The light-tuning stopping rule of the reference: stop once the best of the last `patience`
    validations is worse than the best before them (a tie continues). A metric that has not moved
    at all falls back to the rule on nll."""
    values = [h[metric] for h in history]
    if len(values) <= patience:
        return False
    before, recent = values[:-patience], values[-patience:]
    if metric == "nll":
        return min(before) < min(recent)
    if max(values) == min(values):
        return history[0].get("nll") is not None and reference_stop(history, "nll", patience)
    return max(before) > max(recent)


def question_sample(examples, limit, seed):
    """A fixed random subset of `limit` questions (in their original order); all when limit is
    None, -1 or at least their number."""
    if limit is None or limit < 0 or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


@dataclass(frozen=True)
class LightTuneSettings:
    """Light QA tuning after adaptation (conf/task/eval.yaml's lt_* keys)."""

    lr: float = 2.5e-5
    batch_size: int = 16
    val_steps: int = 16
    patience: int = 3
    stopping_metric: str = "max_f1"
    max_epochs: Optional[int] = None
    optimizer: str = "adam"
    grad_acc_steps: int = 1
    grad_clip_thresh: float = 750.0
    eval_batch_size: int = 16
    decoding: Decoding = GREEDY
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> "LightTuneSettings":
        return cls(
            lr=cfg.lt_lr,
            batch_size=cfg.lt_batch_size,
            val_steps=cfg.lt_val_steps,
            patience=cfg.lt_patience,
            stopping_metric=cfg.lt_stopping_metric,
            max_epochs=cfg.lt_epochs,
            optimizer=cfg.lt_optimizer,
            grad_acc_steps=cfg.lt_grad_acc_steps,
            grad_clip_thresh=cfg.lt_grad_clip_thresh,
            eval_batch_size=cfg.eval_batch_size,
            seed=cfg.seed,
            decoding=Decoding(method="greedy", max_new_tokens=cfg.max_new_tokens, first_line=cfg.answer_first_line),
        )


def light_tune(
    model,
    tokenizer,
    train_examples,
    val_examples,
    collator,
    device,
    settings: LightTuneSettings = LightTuneSettings(),
    progress: bool = True,
) -> List[dict]:
    """Light QA tuning (the reference's early-stopped QA tuning after adaptation): `optimizer` on
    the QA loss of `train_examples` (`settings`), validating on `val_examples` (greedy top-1 and answer NLL,
    as the reference) before training and every `val_steps` steps, until `reference_stop`; then
    the state of the best validation under `stopping_metric` (strictly better counts) is restored.

    Returns the validations: [{"step", "em", "f1", "max_f1", "nll", ...}, ...].
    """
    stopping_metric = settings.stopping_metric
    if stopping_metric not in LT_METRICS:
        raise UsageError(f"lt_stopping_metric={stopping_metric} is unknown; use one of {', '.join(LT_METRICS)}")
    sign = -1.0 if stopping_metric == "nll" else 1.0
    history, best = [], dict(score=-math.inf, state=None)

    def validate(step, epoch, train_loss):
        _, summary = evaluate_qa(
            model,
            tokenizer,
            val_examples,
            collator,
            device,
            ("em", "ppl"),
            settings.eval_batch_size,
            settings.decoding,
            desc="light-tune val",
            progress=progress,
        )
        history.append(dict(step=step, train_loss=train_loss, **summary))
        if sign * summary[stopping_metric] > best["score"]:
            best.update(score=sign * summary[stopping_metric], state=snapshot_parameters(model, "cpu"))
        return reference_stop(history, stopping_metric, settings.patience)

    opt = make_optimizer(settings.optimizer, [p for p in model.parameters() if p.requires_grad], settings.lr)
    qa_tuning_loop(
        model,
        collator,
        train_examples,
        device,
        opt,
        validate,
        batch_size=settings.batch_size,
        grad_acc_steps=settings.grad_acc_steps,
        grad_clip_thresh=settings.grad_clip_thresh,
        val_steps=settings.val_steps,
        max_epochs=settings.max_epochs,
        seed=settings.seed,
        progress=progress,
        desc="light-tuning",
    )
    restore_parameters(model, best["state"])
    model.eval()
    return history
