"""Training-free weightings read from the language model being adapted (registered in weight_model.py).

  surprisal    each token weighs by the adapted model's own next-token loss on it, as it is just
               before the step on that document: w ∝ loss^(1/temperature) on the top_k_percent
               tokens of highest loss, 0 on the rest;
  excess_loss  Rho-1 (Lin et al. 2024): the adapted model's loss minus a reference model's; the
               top_k_percent tokens of highest excess loss weigh 1, the rest 0.
Both rescale each document's weights to mean 1 over its real tokens (CaMeLS's `normalize`), so they
move where the weight goes, not its total. The first real token of a document has no prediction
(util.weighted_lm_loss never scales a loss by it) and weighs 0; so does padding.

They need the model they weigh for: `bind(base_model)` keeps a reference to it (the caller's model,
not part of the weight model: its parameters, .to() and state dict stay the caller's); excess_loss
takes its reference model there too (by default a frozen copy of the model as bound). The losses are
computed without gradients and in eval mode (no dropout), the model's mode restored afterwards.
"""

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing.errors import UsageError
from plumbing.loading import load_causal_lm
from util import at_least_float32


def token_losses(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """B×T float: [:, t] is the model's loss (NLL) of token t given the tokens before it; 0 at a
    document's first real token (nothing predicts it) and on padding."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        model.train(was_training)
    nll = F.cross_entropy(at_least_float32(logits[:, :-1]).transpose(1, 2), input_ids[:, 1:], reduction="none")
    losses = torch.zeros(input_ids.shape, dtype=nll.dtype, device=nll.device)
    losses[:, 1:] = nll
    return losses * predicted_positions(attention_mask)


def predicted_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """B×T bool: the real tokens that follow another real token (every real token but the first)."""
    real = attention_mask.bool()
    return real & (real.long().cumsum(1) > 1)


def keep_top_percent(scores, candidates, percent):
    """B×T bool: per row, the candidates whose score is among the ceil(percent% of the row's
    candidates) highest; every candidate tied with the last one kept is kept too, so equal scores
    (e.g. an excess loss of 0 everywhere) keep all of them rather than an arbitrary subset."""
    masked = scores.masked_fill(~candidates, -math.inf)
    counts = candidates.sum(1).double()
    # the small tolerance keeps 8.8% of 375 at 33, although 375 * 8.8 / 100 is 33.00000000000001
    keep = torch.ceil(counts * percent / 100 - 1e-9).clamp(min=1).long()
    cutoff = masked.sort(1, descending=True).values.gather(1, (keep - 1)[:, None])
    return candidates & (masked >= cutoff)


def mean_one(weights: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row rescaled to mean 1 over its real tokens (all-zero rows stay 0)."""
    n_real = attention_mask.sum(1, keepdim=True).to(weights.dtype)
    return weights * n_real / weights.sum(1, keepdim=True).clamp(min=1e-8)


class Surprisal(nn.Module):
    """w ∝ loss^(1/temperature) of the adapted model on its `top_k_percent` highest-loss tokens, 0
    elsewhere, mean 1 over real tokens. temperature 1: proportional to the loss; larger: flatter
    (towards uniform on the kept tokens); smaller: sharper. The weights are invariant to the scale of
    the loss, so one temperature means the same on any model."""

    name = None  # set by weight_model.register, as for every weight model
    learned = False
    adapts = True

    def __init__(self, top_k_percent=100.0, temperature=1.0):
        super().__init__()
        if not 0 < float(top_k_percent) <= 100:
            raise UsageError(f"model.top_k_percent={top_k_percent} is invalid; keep a percentage in (0, 100]")
        if not float(temperature) > 0:
            raise UsageError(f"model.temperature={temperature} is invalid; it must be a positive number")
        self.top_k_percent = float(top_k_percent)
        self.temperature = float(temperature)
        self.bind(None)

    @classmethod
    def from_config(cls, model_cfg, tokenizer, documents=None, stream=None):
        return cls(model_cfg.top_k_percent, model_cfg.temperature)

    def bind(self, base_model):
        """Weigh for `base_model` (the model being adapted, kept by reference); returns self."""
        object.__setattr__(self, "adapted_model", base_model)  # not a child module: the caller owns it
        return self

    def adapted(self):
        if self.adapted_model is None:
            raise UsageError(
                f"model={self.name} weighs with the model being adapted and has none; "
                "call bind(base_model) first (run.py does)"
            )
        return self.adapted_model

    def token_scores(self, input_ids, attention_mask):
        return token_losses(self.adapted(), input_ids, attention_mask)

    def kept_weights(self, scores, kept):
        return scores.clamp(min=0).pow(1 / self.temperature) * kept

    def forward(self, input_ids, attention_mask):
        scores = self.token_scores(input_ids, attention_mask)
        kept = keep_top_percent(scores, predicted_positions(attention_mask), self.top_k_percent)
        return mean_one(self.kept_weights(scores, kept).float(), attention_mask)


class ExcessLoss(Surprisal):
    """Rho-1's selection: the `top_k_percent` tokens of highest excess loss (adapted model's loss
    minus the reference model's) weigh 1, the others 0, mean 1 over real tokens. The reference is
    `reference_model` (a name or folder, loaded once, frozen), or by default a frozen copy of the
    model bound, taken at bind: the base model before the stream, so the excess loss is what the
    adaptation so far has made harder (equal everywhere on the first document: all tokens kept)."""

    def __init__(self, top_k_percent=100.0, reference_model=None, reference=None):
        super().__init__(top_k_percent)
        self.reference_model = reference_model
        self.reference = reference
        if reference is not None:
            reference.eval().requires_grad_(False)

    @classmethod
    def from_config(cls, model_cfg, tokenizer, documents=None, stream=None):
        name = model_cfg.reference_model
        reference = None if name is None else load_causal_lm(name)
        if reference is not None and tokenizer is not None and len(tokenizer) > reference.config.vocab_size:
            raise UsageError(
                f"model.reference_model={name} has {reference.config.vocab_size} token embeddings but "
                f"the base model's tokenizer has {len(tokenizer)} tokens; use a reference of the "
                "base model's tokenizer family"
            )
        return cls(model_cfg.top_k_percent, name, reference)

    def bind(self, base_model):
        """Weigh for `base_model`; without a reference_model, a frozen copy of it as it is now is the reference."""
        super().bind(base_model)
        if base_model is not None and self.reference_model is None:
            self.reference = copy.deepcopy(base_model).eval().requires_grad_(False)
        return self

    def token_scores(self, input_ids, attention_mask):
        return token_losses(self.adapted(), input_ids, attention_mask) - token_losses(
            self.reference, input_ids, attention_mask
        )

    def kept_weights(self, scores, kept):
        return kept.to(scores.dtype)
