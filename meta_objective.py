"""The meta-objective of CaMeLS: the inner loop (`inner_loop`), the outer loss (`outer_loss`) and
how its gradient reaches the weight model (`accumulate_meta_gradient`).

The inner loop takes differentiable SGD steps of a copy of the base model on the weighted document
loss; the outer loss is the answer NLL after those steps plus the KL locality term. Its gradient
reaches the weight model through the token weights, taken one of three ways (`inner_backend`,
`grad_checkpointing`): higher / torch_func keep every inner step's activations for the backward
pass (memory grows with the unroll depth); torch_func + grad_checkpointing keeps only the fast
weights of every `checkpoint_every`-th step and recomputes the steps in the backward pass (the same
gradient); forward estimates the gradient with forward-mode directional derivatives along random
directions (memory flat in the depth), optionally as the correction of a first-order
meta-gradient (`forward_mix`).
"""

import dataclasses
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel

from plumbing.errors import UsageError
from plumbing.schemas import INNER_BACKENDS
from util import answer_nll, kl_locality, weighted_lm_loss


@dataclass(frozen=True)
class MetaSettings:
    """What defines the outer loss of a batch and how its gradient is taken; see conf/task/train.yaml."""

    inner_lr: float
    num_inner_steps: int = 1
    sequential_update: bool = True
    max_text_len: int = 1024
    c_kl: float = 0.1
    c_norm: float = 0.0
    backend: str = "higher"
    grad_checkpointing: bool = False
    checkpoint_every: int = 1
    forward_probes: int = 1
    forward_mix: bool = False
    inner_autocast: str | None = None

    @classmethod
    def from_config(cls, cfg):
        return cls(
            inner_lr=float(cfg.inner_lr),
            num_inner_steps=int(cfg.num_inner_steps),
            sequential_update=bool(cfg.sequential_update),
            max_text_len=int(cfg.dataset.max_text_len),
            c_kl=float(cfg.c_kl),
            c_norm=float(cfg.c_norm),
            backend=str(cfg.inner_backend),
            grad_checkpointing=bool(cfg.grad_checkpointing),
            checkpoint_every=int(cfg.checkpoint_every),
            forward_probes=int(cfg.forward_probes),
            forward_mix=bool(cfg.forward_mix),
            inner_autocast=cfg.inner_autocast,
        )

    def autocast(self, device):
        """The base model's forward passes after the start of the inner loop run under this."""
        if self.inner_autocast is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=getattr(torch, self.inner_autocast))


def check_meta_options(cfg) -> None:
    """A one-line error for meta-gradient options that do not go together, before any work."""
    if cfg.grad_checkpointing and cfg.inner_backend != "torch_func":
        raise UsageError(
            "grad_checkpointing=true needs inner_backend=torch_func (higher's patched modules "
            "cannot recompute activations with the right fast weights)"
        )
    if cfg.checkpoint_every > 1 and not cfg.grad_checkpointing:
        raise UsageError(
            f"checkpoint_every={cfg.checkpoint_every} needs grad_checkpointing=true (inner_backend=torch_func)"
        )
    if cfg.forward_mix and cfg.inner_backend != "forward":
        raise UsageError("forward_mix=true needs inner_backend=forward")


def inner_batches(text_ids, text_mask, weights, settings):
    """(ids, mask, weights) of each inner SGD step, in order: per pass (`num_inner_steps`), one step
    per document (cut to its own length, so padding costs nothing) or one step on the whole batch."""
    lengths = text_mask.sum(1).tolist()
    for _ in range(settings.num_inner_steps):
        if settings.sequential_update:
            for row, length in enumerate(lengths):
                yield (
                    text_ids[row : row + 1, :length],
                    text_mask[row : row + 1, :length],
                    weights[row : row + 1, :length],
                )
        else:
            yield text_ids, text_mask, weights


@dataclass
class AdaptedModel:
    """The base model after the inner loop: `logits(input_ids, attention_mask)` runs it with the
    updated weights; `params` are those weights, in the order of base_model.parameters();
    `module` is the module whose train/eval mode those calls follow."""

    logits: object
    params: list
    module: object = None


@contextmanager
def eval_mode(module):
    """`module` in eval mode (no dropout) inside the block, its own mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def lm_call(model, input_ids, attention_mask, **kwargs):
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits


class FunctionalBase:
    """The base model as a function of its trainable weights (torch.func.functional_call): the inner
    SGD step of the torch_func and forward backends, plain, checkpointed or under forward-mode AD."""

    def __init__(self, model, settings):
        named = list(model.named_parameters())
        self.model, self.settings = model, settings
        self.order = [name for name, _ in named]
        self.names = [name for name, p in named if p.requires_grad]
        self.frozen = {name: p.detach() for name, p in named if not p.requires_grad}
        self.start = tuple(p.detach() for _, p in named if p.requires_grad)

    def logits(self, params, ids, mask):
        weights = {**self.frozen, **dict(zip(self.names, params))}
        with self.settings.autocast(ids.device):
            return lm_call(lambda **kw: torch.func.functional_call(self.model, weights, (), kw), ids, mask)

    def logits_in_mode(self, training, params, ids, mask):
        """logits() with the model in train (dropout) or eval mode, its own mode restored after."""
        was_training = self.model.training
        self.model.train(training)
        try:
            return self.logits(params, ids, mask)
        finally:
            self.model.train(was_training)

    def sgd_step(self, params, ids, mask, w, in_place=False):
        """The weights after one SGD step on the weighted loss of (ids, mask, w); differentiable
        in params and w by reverse and forward mode (torch.func.grad composes with both).
        in_place overwrites `params` (and their tangents), for steps that no reverse-mode graph
        records: a step then holds two copies of the weights (params, gradients), not three."""

        def loss(current):
            return weighted_lm_loss(self.logits(current, ids, mask), ids, mask, w, self.settings.max_text_len)

        grads = list(torch.func.grad(loss)(params))
        if not in_place:
            return tuple(p - self.settings.inner_lr * g for p, g in zip(params, grads))
        for index, p in enumerate(params):
            p.sub_(self.settings.inner_lr * grads[index])  # the rounding of the out-of-place step
            grads[index] = None  # freed as soon as applied
        return params

    def all_params(self, params):
        values = {**self.frozen, **dict(zip(self.names, params))}
        return [values[name] for name in self.order]


class CheckpointedSegment(torch.autograd.Function):
    """Consecutive inner SGD steps that keep only their inputs: the fast weights at the segment's
    start and each step's token weights. The backward pass takes the steps from the last: it
    recomputes the step's input weights from the segment's start (without a graph), then the step
    with the graph of its own gradient, and backpropagates through it (exact; each step's RNG
    state is replayed so dropout draws the same masks). A segment of one step recomputes nothing
    but the step itself; a segment of S steps keeps one copy of the fast weights instead of S, for
    S(S-1)/2 extra plain steps in the backward pass."""

    @staticmethod
    def forward(ctx, base, batches, *inputs):
        ws, params = inputs[: len(batches)], inputs[len(batches) :]
        ctx.base, ctx.batches, ctx.rngs = base, batches, []
        ctx.save_for_backward(*inputs)
        for index, ((ids, mask), w) in enumerate(zip(batches, ws)):
            ctx.rngs.append(rng_state(ids.device))
            params = base.sgd_step(params, ids, mask, w, in_place=index > 0)
        return params

    @staticmethod
    def backward(ctx, *grad_outputs):
        count, base = len(ctx.batches), ctx.base
        saved = ctx.saved_tensors
        ws, start = saved[:count], saved[count:]
        needs_w, needs_start = ctx.needs_input_grad[2 : 2 + count], ctx.needs_input_grad[2 + count :]
        w_grads, grads = [None] * count, grad_outputs
        for step in reversed(range(count)):
            params = start
            with torch.no_grad():
                for earlier in range(step):
                    with replayed_rng(ctx.rngs[earlier], ws[earlier].device):
                        params = base.sgd_step(params, *ctx.batches[earlier], ws[earlier], in_place=earlier > 0)
            w = ws[step].detach().requires_grad_(needs_w[step])
            params = [p.detach().requires_grad_(step > 0 or need) for p, need in zip(params, needs_start)]
            with torch.enable_grad(), replayed_rng(ctx.rngs[step], w.device):
                outputs = base.sgd_step(tuple(params), *ctx.batches[step], w)
            wanted = [t for t in (w, *params) if t.requires_grad]
            found = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True))
            w_grads[step] = next(found) if w.requires_grad else None
            grads = tuple(next(found) if p.requires_grad else None for p in params)
            # this step's weights and graph go before the next step's inputs are recomputed
            del outputs, wanted, found, params
        return (None, None, *w_grads, *grads)


def rng_state(device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextmanager
def replayed_rng(state, device):
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


@contextmanager
def inner_loop(
    base_model,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    weights: torch.Tensor,
    settings: "MetaSettings",
    differentiable: bool = True,
):
    """Run the inner SGD steps on a copy of `base_model` whose initial weights get no gradient.

    differentiable=True keeps the graph of every step (second-order gradients reach `weights`;
    with grad_checkpointing only each step's inputs are kept); False takes plain first-order steps
    (validation). Under torch.func.jvp (the forward backend) the steps carry tangents instead.
    """
    steps = inner_batches(text_ids, text_mask, weights, settings)
    if settings.backend == "higher":
        import higher

        inner_opt = torch.optim.SGD(base_model.parameters(), lr=settings.inner_lr)
        with higher.innerloop_ctx(
            base_model, inner_opt, copy_initial_weights=True, track_higher_grads=differentiable
        ) as (fmodel, diffopt):
            with settings.autocast(text_ids.device):
                for ids, mask, w in steps:
                    diffopt.step(weighted_lm_loss(lm_call(fmodel, ids, mask), ids, mask, w, settings.max_text_len))

            def adapted_logits(ids, mask):
                with settings.autocast(ids.device):
                    return lm_call(fmodel, ids, mask)

            yield AdaptedModel(adapted_logits, list(fmodel.fast_params), fmodel)
    elif settings.backend in ("torch_func", "forward"):
        base = FunctionalBase(base_model, settings)
        params = base.start
        differentiable = differentiable and torch.is_grad_enabled()
        checkpointed = settings.grad_checkpointing and differentiable
        with torch.set_grad_enabled(differentiable):
            if checkpointed:
                steps = list(steps)
                for first in range(0, len(steps), settings.checkpoint_every):
                    segment = steps[first : first + settings.checkpoint_every]
                    params = CheckpointedSegment.apply(
                        base, [(ids, mask) for ids, mask, _ in segment], *[w for _, _, w in segment], *params
                    )
            else:
                for index, (ids, mask, w) in enumerate(steps):
                    # without a graph (forward mode, validation) a step overwrites the weights of the
                    # step before; never the first step's, which are the base model's own
                    params = base.sgd_step(params, ids, mask, w, in_place=index > 0 and not differentiable)

        def logits(ids, mask):
            if checkpointed:
                # the mode of this call, also when the backward pass recomputes it outside eval_mode
                return torch.utils.checkpoint.checkpoint(
                    base.logits_in_mode, base_model.training, params, ids, mask, use_reentrant=False
                )
            return base.logits(params, ids, mask)

        yield AdaptedModel(logits, base.all_params(params), base_model)
    else:
        raise UsageError(f"inner_backend={settings.backend} is unknown; use one of {', '.join(INNER_BACKENDS)}")


def text_nll(logits, text_ids, text_mask):
    """Plain mean next-token NLL over the real tokens of documents (the unweighted document loss)."""
    return answer_nll(logits, text_ids.masked_fill(text_mask == 0, -100))


def weight_norm_penalty(weights, text_mask):
    """Root mean square of the weights over real tokens."""
    mask = text_mask.to(weights.dtype)
    return ((weights * mask).pow(2).sum() / mask.sum().clamp(min=1)).sqrt()


@torch.no_grad()
def reference_outputs(base_model, batch, loc_batches, diagnostics=False, one_at_a_time=False):
    """What the base model does before the update: QA loss, locality logits (the KL's reference)
    and, for diagnostics, the document loss."""
    unchanged = AdaptedModel(lambda ids, mask: lm_call(base_model, ids, mask), list(base_model.parameters()))
    return dict(
        qa=answer_loss(unchanged, batch, one_at_a_time),
        loc={name: lm_call(base_model, ids, mask) for name, (ids, mask) in loc_batches.items()},
        text=(
            text_nll(lm_call(base_model, batch["text_ids"], batch["text_mask"]), batch["text_ids"], batch["text_mask"])
            if diagnostics
            else None
        ),
    )


def scaled(value, factor):
    """value x factor; the factor as a tensor of value's dtype, because forward-mode AD turns the
    tangent of (0-dim tensor x Python float) into float64."""
    return value * torch.tensor(factor, dtype=value.dtype, device=value.device)


def answer_loss(adapted, batch, one_at_a_time=False):
    """Answer NLL of the adapted model, mean over the batch's answer tokens. one_at_a_time runs
    the questions one by one (the same value): without a graph to keep (forward mode), memory
    then does not grow with the number of questions."""
    if not one_at_a_time:
        return answer_nll(adapted.logits(batch["qa_ids"], batch["qa_mask"]), batch["qa_labels"])
    counts = (batch["qa_labels"][:, 1:] != -100).sum(1)
    total = 0
    for row in counts.nonzero().flatten().tolist():
        nll = answer_nll(
            adapted.logits(batch["qa_ids"][row : row + 1], batch["qa_mask"][row : row + 1]),
            batch["qa_labels"][row : row + 1],
        )
        total = total + nll * counts[row].to(nll.dtype)
    return total / counts.sum().clamp(min=1)


def adapted_loss(adapted, weights, batch, loc_batches, before, settings, one_at_a_time=False):
    """(outer loss, {qa_loss, kl_<name>: tensors}) of the adapted model."""
    qa_after = answer_loss(adapted, batch, one_at_a_time)
    loss = qa_after
    with torch.set_grad_enabled(torch.is_grad_enabled() and settings.c_kl != 0):
        kls = {
            name: kl_locality(before["loc"][name], adapted.logits(ids, mask), mask)
            for name, (ids, mask) in loc_batches.items()
        }
    if kls and settings.c_kl != 0:
        loss = loss + scaled(sum(kls.values()), settings.c_kl / len(kls))
    if settings.c_norm != 0:
        loss = loss + scaled(weight_norm_penalty(weights, batch["text_mask"]), settings.c_norm)
    return loss, dict(qa_loss=qa_after, **{f"kl_{name}": kl for name, kl in kls.items()})


def loss_metrics(loss, terms, before):
    metrics = dict(
        outer_loss=loss.item(),
        qa_loss=terms["qa_loss"].item(),
        qa_before=before["qa"].item(),
        qa_gain=before["qa"].item() - terms["qa_loss"].item(),
    )
    metrics.update({name: value.item() for name, value in terms.items() if name.startswith("kl_")})
    return metrics


def outer_loss(
    base_model,
    weights: torch.Tensor,
    batch: dict,
    loc_batches: list,
    settings: "MetaSettings",
    differentiable: bool = True,
    diagnostics: bool = False,
):
    """The meta-objective of one batch, given its per-token weights.

    The "before" numbers and the inner steps run in the base model's own mode (train mode: with
    dropout, as the reference); everything after the update runs in eval mode, as the reference
    scores the updated model.
    Returns (loss, metrics, updated_params): loss = answer NLL after the inner update
    + c_kl x mean KL(before || after) over the locality sets (+ c_norm x weight-norm penalty);
    metrics are floats; updated_params (detached) are the base weights after the update.
    diagnostics=True also measures the document loss before and after the update.
    """
    before = reference_outputs(base_model, batch, loc_batches, diagnostics)
    with (
        inner_loop(base_model, batch["text_ids"], batch["text_mask"], weights, settings, differentiable) as adapted,
        eval_mode(adapted.module),
    ):
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            loss, terms = adapted_loss(adapted, weights, batch, loc_batches, before, settings)
        metrics = loss_metrics(loss, terms, before)
        if diagnostics:
            with torch.no_grad():
                text_after = text_nll(
                    adapted.logits(batch["text_ids"], batch["text_mask"]), batch["text_ids"], batch["text_mask"]
                )
            metrics.update(
                text_loss=text_after.item(),
                text_before=before["text"].item(),
                text_gain=before["text"].item() - text_after.item(),
            )
        updated = [p.detach() for p in adapted.params]
    return loss, metrics, updated


def forward_meta_gradient(weight_model, base_model, batch, loc_batches, settings, probes=None):
    """Forward-mode estimate of the meta-gradient (inner_backend=forward): for K = forward_probes
    Rademacher directions v_k in the space of the weight model's trainable parameters, the
    directional derivative d/de L(theta + e v_k) by torch.func.jvp through the weight model, the
    unrolled inner steps (each step's gradient differentiated forward-over-reverse) and the outer
    loss; estimate = mean_k (d_k v_k), unbiased because E[v v^T] = I. The K probes share one primal
    pass (torch.func.vmap over the tangents); nothing is kept across inner steps, and documents and
    questions are processed one at a time.

    `probes` (one tensor per trainable parameter, each with a leading probe dimension) replaces the
    random directions. Returns (loss, metrics, updated_params, weights, gradient estimates).
    """
    before = reference_outputs(base_model, batch, loc_batches, one_at_a_time=True)
    named = list(weight_model.named_parameters())
    names = [name for name, p in named if p.requires_grad]
    frozen = {name: p.detach() for name, p in named if not p.requires_grad}
    theta = tuple(p.detach() for _, p in named if p.requires_grad)

    def objective(current):
        # documents and questions one at a time, so that memory does not grow with update_batch_size
        params = {**frozen, **dict(zip(names, current))}
        weights = torch.cat(
            [
                torch.func.functional_call(weight_model, params, (ids[None], mask[None]))
                for ids, mask in zip(batch["text_ids"], batch["text_mask"])
            ]
        )
        with (
            inner_loop(base_model, batch["text_ids"], batch["text_mask"], weights, settings) as adapted,
            eval_mode(adapted.module),
        ):
            loss, terms = adapted_loss(adapted, weights, batch, loc_batches, before, settings, one_at_a_time=True)
            return loss, (terms, tuple(adapted.params), weights)

    def directional(tangent):
        return torch.func.jvp(objective, (theta,), (tangent,), has_aux=True)

    if probes is None:
        probes = tuple(
            torch.randint(0, 2, (settings.forward_probes, *p.shape), device=p.device).to(p.dtype) * 2 - 1 for p in theta
        )
    # forward-mode AD is not implemented for the fused attention kernels (CPU flash attention):
    # a body loaded with SDPA attention runs its composite math kernel instead
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        # the primal outputs do not depend on the probe: vmap returns K copies of them
        loss, slopes, (terms, params, weights) = torch.func.vmap(directional, randomness="same")(probes)
    params = [p[0] for p in params]
    if settings.forward_mix:
        # a control variate: h + mean_k (d_k - v_k.h) v_k has the mean of mean_k (d_k v_k) for any
        # h drawn independently of the probes, and a variance that shrinks as h nears the gradient
        first_order = first_order_meta_gradient(
            weight_model, base_model, batch, loc_batches, settings, before, params, weights[0]
        )
        slopes = slopes - sum((v * h).flatten(1).sum(1) for v, h in zip(probes, first_order))
    else:
        first_order = [0] * len(probes)
    estimates = [h + (slopes.reshape(-1, *[1] * (v.dim() - 1)) * v).mean(0) for v, h in zip(probes, first_order)]
    terms = {name: value[0] for name, value in terms.items()}
    loss = loss[0]
    return loss, loss_metrics(loss, terms, before), params, weights[0], estimates


def first_order_meta_gradient(weight_model, base_model, batch, loc_batches, settings, before, final_params, weights):
    """The cheap term of forward_mix: the first-order meta-gradient (first_order_weight_gradient,
    at the token weights `weights`, plus the weight-norm penalty's exact term) taken on to the
    weight model's trainable parameters, one document at a time after the inner steps."""
    token_grad = first_order_weight_gradient(base_model, weights, batch, loc_batches, settings, before, final_params)
    if settings.c_norm != 0:
        penalty_grad = torch.func.grad(weight_norm_penalty)(weights, batch["text_mask"])
        token_grad = token_grad + scaled(penalty_grad, settings.c_norm)
    trainable = [p for p in weight_model.parameters() if p.requires_grad]
    totals = [torch.zeros_like(p) for p in trainable]
    with torch.enable_grad():
        for ids, mask, grad in zip(batch["text_ids"], batch["text_mask"], token_grad):
            row = weight_model(ids[None], mask[None])
            for total, found in zip(totals, torch.autograd.grad(row, trainable, grad[None], allow_unused=True)):
                if found is not None:
                    total.add_(found)
    return totals


def first_order_weight_gradient(base_model, weights, batch, loc_batches, settings, before, final_params):
    """d(outer loss)/d(token weights) with the Jacobian of each later inner step taken as the
    identity (exact for the last step's token weights, biased by O(inner_lr) for the others): the
    token weights w of the step from fast weights theta_i get -inner_lr x d/dw <grad_theta of the
    step's loss at theta_i, g>, g the gradient of the outer loss (without the weight-norm penalty)
    at the final weights `final_params` (all of the base model's, in order). One inner step's
    double-backward graph is kept at a time."""
    base = FunctionalBase(base_model, settings)
    trainable = [p.requires_grad for p in base_model.parameters()]
    final = tuple(p.detach().requires_grad_() for p, keep in zip(final_params, trainable) if keep)
    # recomputed in the backward pass: the graph keeps each question's logits, not its activations
    adapted = AdaptedModel(
        lambda ids, mask: torch.utils.checkpoint.checkpoint(base.logits, final, ids, mask, use_reentrant=False),
        base.all_params(final),
    )
    with torch.enable_grad():
        with eval_mode(base_model):
            outer, _ = adapted_loss(
                adapted,
                weights,
                batch,
                loc_batches,
                before,
                dataclasses.replace(settings, c_norm=0.0),
                one_at_a_time=True,
            )
        outer_grad = torch.autograd.grad(outer, final)
        token_weights = weights.detach().requires_grad_()
        params = base.start
        for index, (ids, mask, w) in enumerate(
            inner_batches(batch["text_ids"], batch["text_mask"], token_weights, settings)
        ):
            start = tuple(p.detach().requires_grad_() for p in params)
            step_loss = weighted_lm_loss(base.logits(start, ids, mask), ids, mask, w, settings.max_text_len)
            grads = torch.autograd.grad(step_loss, start, create_graph=True)
            alignment = sum((g * d).sum() for g, d in zip(grads, outer_grad))
            scaled(alignment, -settings.inner_lr).backward(inputs=[token_weights])
            del step_loss, grads, alignment  # a copy of the weights: not kept through the next step
            with torch.no_grad():
                params = base.sgd_step(params, ids, mask, w.detach(), in_place=index > 0)
    return token_weights.grad


def accumulate_meta_gradient(
    weight_model, base_model, batch: dict, loc_batches: list, settings: "MetaSettings", scale: float = 1.0
) -> tuple:
    """One batch of meta-training: adds scale x the meta-gradient of its outer loss (exact, or the
    forward-mode estimate for inner_backend=forward) to the .grad of the weight model's trainable
    parameters. Returns (weights (detached), metrics, updated base weights)."""
    trainable = [p for p in weight_model.parameters() if p.requires_grad]
    if settings.backend == "forward":
        _, metrics, updated, weights, estimates = forward_meta_gradient(
            weight_model, base_model, batch, loc_batches, settings
        )
        for p, estimate in zip(trainable, estimates):
            p.grad = scale * estimate if p.grad is None else p.grad + scale * estimate
        return weights, metrics, updated
    if settings.grad_checkpointing:
        weights = torch.utils.checkpoint.checkpoint(
            weight_model, batch["text_ids"], batch["text_mask"], use_reentrant=False
        )
    else:
        weights = weight_model(batch["text_ids"], batch["text_mask"])
    loss, metrics, updated = outer_loss(base_model, weights, batch, loc_batches, settings, differentiable=True)
    (scale * loss).backward(inputs=trainable)
    return weights.detach(), metrics, updated
