"""The meta-objective of CaMeLS: the inner loop (`inner_loop`) and the outer loss (`outer_loss`).

The inner loop takes differentiable SGD steps of a copy of the base model on the weighted document
loss; the outer loss is the answer NLL after those steps plus the KL locality term. Its gradient
reaches the weight model through the token weights.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from util import UsageError, answer_nll, kl_locality, weighted_lm_loss

INNER_BACKENDS = ("higher", "torch_func")


@dataclass(frozen=True)
class MetaSettings:
    """What defines the outer loss of a batch; see conf/task/train.yaml for each knob."""

    inner_lr: float
    num_inner_steps: int = 1
    sequential_update: bool = True
    max_text_len: int = 1024
    c_kl: float = 0.1
    c_norm: float = 0.0
    backend: str = "higher"
    grad_checkpointing: bool = False

    @classmethod
    def from_config(cls, cfg):
        return cls(inner_lr=float(cfg.inner_lr), num_inner_steps=int(cfg.num_inner_steps),
                   sequential_update=bool(cfg.sequential_update), max_text_len=int(cfg.dataset.max_text_len),
                   c_kl=float(cfg.c_kl), c_norm=float(cfg.c_norm), backend=str(cfg.inner_backend),
                   grad_checkpointing=bool(cfg.grad_checkpointing))


def inner_batches(text_ids, text_mask, weights, settings):
    """(ids, mask, weights) of each inner SGD step, in order: per pass (`num_inner_steps`), one step
    per document (cut to its own length, so padding costs nothing) or one step on the whole batch."""
    lengths = text_mask.sum(1).tolist()
    for _ in range(settings.num_inner_steps):
        if settings.sequential_update:
            for row, length in enumerate(lengths):
                yield text_ids[row:row + 1, :length], text_mask[row:row + 1, :length], weights[row:row + 1, :length]
        else:
            yield text_ids, text_mask, weights


@dataclass
class AdaptedModel:
    """The base model after the inner loop: `logits(input_ids, attention_mask)` runs it with the
    updated weights; `params` are those weights, in the order of base_model.parameters()."""

    logits: object
    params: list


def lm_call(model, input_ids, attention_mask, **kwargs):
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits


@contextmanager
def inner_loop(base_model, text_ids, text_mask, weights, settings, differentiable=True):
    """Run the inner SGD steps on a copy of `base_model` whose initial weights get no gradient.

    differentiable=True keeps the graph of every step (second-order gradients reach `weights`);
    False takes plain first-order steps (validation).
    """
    steps = inner_batches(text_ids, text_mask, weights, settings)
    if settings.backend == "higher":
        import higher

        inner_opt = torch.optim.SGD(base_model.parameters(), lr=settings.inner_lr)
        with higher.innerloop_ctx(base_model, inner_opt, copy_initial_weights=True,
                                  track_higher_grads=differentiable) as (fmodel, diffopt):
            for ids, mask, w in steps:
                diffopt.step(weighted_lm_loss(lm_call(fmodel, ids, mask), ids, mask, w, settings.max_text_len))
            yield AdaptedModel(lambda ids, mask: lm_call(fmodel, ids, mask), list(fmodel.fast_params))
    elif settings.backend == "torch_func":
        names = [name for name, _ in base_model.named_parameters()]
        trainable = [p.requires_grad for p in base_model.parameters()]
        params = [p.detach().requires_grad_(t) for p, t in zip(base_model.parameters(), trainable)]

        def run(ids, mask, *current):
            return lm_call(lambda **kw: torch.func.functional_call(base_model, dict(zip(names, current)), (), kw),
                           ids, mask)

        def logits(current, ids, mask):
            if settings.grad_checkpointing:
                # the weights are inputs of the checkpointed call, so the recomputation in the
                # backward pass uses the same fast weights (transformers' own checkpointing would
                # recompute with the module's stored weights)
                return torch.utils.checkpoint.checkpoint(run, ids, mask, *current, use_reentrant=False)
            return run(ids, mask, *current)

        for ids, mask, w in steps:
            loss = weighted_lm_loss(logits(params, ids, mask), ids, mask, w, settings.max_text_len)
            targets = [p for p, t in zip(params, trainable) if t]
            grads = iter(torch.autograd.grad(loss, targets, create_graph=differentiable, allow_unused=True))
            updated = []
            for p, t in zip(params, trainable):
                grad = next(grads) if t else None
                step = p if grad is None else p - settings.inner_lr * grad
                updated.append(step if differentiable or not t else step.detach().requires_grad_())
            params = updated
        yield AdaptedModel(lambda ids, mask: logits(params, ids, mask), params)
    else:
        raise UsageError(f"inner_backend={settings.backend} is unknown; use one of {', '.join(INNER_BACKENDS)}")


def text_nll(logits, text_ids, text_mask):
    """Plain mean next-token NLL over the real tokens of documents (the unweighted document loss)."""
    return answer_nll(logits, text_ids.masked_fill(text_mask == 0, -100))


def weight_norm_penalty(weights, text_mask):
    """Root mean square of the weights over real tokens."""
    mask = text_mask.to(weights.dtype)
    return ((weights * mask).pow(2).sum() / mask.sum().clamp(min=1)).sqrt()


def outer_loss(base_model, weights, batch, loc_batches, settings, differentiable=True, diagnostics=False):
    """The meta-objective of one batch, given its per-token weights.

    Returns (loss, metrics, updated_params): loss = answer NLL after the inner update
    + c_kl x mean KL(before || after) over the locality sets (+ c_norm x weight-norm penalty);
    metrics are floats; updated_params (detached) are the base weights after the update.
    diagnostics=True also measures the document loss before and after the update.
    """
    with torch.no_grad():
        qa_before = answer_nll(lm_call(base_model, batch["qa_ids"], batch["qa_mask"]), batch["qa_labels"])
        loc_before = {name: lm_call(base_model, ids, mask) for name, (ids, mask) in loc_batches.items()}
        text_before = (text_nll(lm_call(base_model, batch["text_ids"], batch["text_mask"]), batch["text_ids"],
                                batch["text_mask"]) if diagnostics else None)
    with inner_loop(base_model, batch["text_ids"], batch["text_mask"], weights, settings, differentiable) as adapted:
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            qa_after = answer_nll(adapted.logits(batch["qa_ids"], batch["qa_mask"]), batch["qa_labels"])
            loss = qa_after
            with torch.set_grad_enabled(torch.is_grad_enabled() and settings.c_kl != 0):
                kls = {name: kl_locality(loc_before[name], adapted.logits(ids, mask), mask)
                       for name, (ids, mask) in loc_batches.items()}
            if kls and settings.c_kl != 0:
                loss = loss + settings.c_kl * sum(kls.values()) / len(kls)
            if settings.c_norm != 0:
                loss = loss + settings.c_norm * weight_norm_penalty(weights, batch["text_mask"])
        metrics = dict(outer_loss=loss.item(), qa_loss=qa_after.item(), qa_before=qa_before.item(),
                       qa_gain=qa_before.item() - qa_after.item(),
                       **{f"kl_{name}": kl.item() for name, kl in kls.items()})
        if diagnostics:
            with torch.no_grad():
                text_after = text_nll(adapted.logits(batch["text_ids"], batch["text_mask"]), batch["text_ids"],
                                      batch["text_mask"])
            metrics.update(text_loss=text_after.item(), text_before=text_before.item(),
                           text_gain=text_before.item() - text_after.item())
        updated = [p.detach() for p in adapted.params]
    return loss, metrics, updated
