"""QA metrics (SQuAD conventions) and the three losses of the method: the weighted LM loss of documents,
the answer NLL and the locality KL."""

import re
import string
from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor

# EM uses a prefix rule, as the reference: a generation running past the answer still counts when it
# starts with the answer (so EM can exceed F1).

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation, drop the articles a/an/the, fold white space."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the normalised prediction, cut to the normalised answer's length, equals it."""
    pred, gold = normalize_answer(prediction), normalize_answer(answer)
    return float(pred[: len(gold)] == gold)


def f1_score(prediction: str, answer: str) -> float:
    """SQuAD token-level F1 between normalised prediction and answer."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(answer).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------
# Losses


def at_least_float32(tensor: Tensor) -> Tensor:
    """Half precision is upcast for the losses; float64 stays float64 (gradient checks need it)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def weighted_lm_loss(
    logits: Tensor, input_ids: Tensor, attention_mask: Tensor, weights: Tensor, max_text_len: int
) -> Tensor:
    """Token loss of documents, each next-token cross-entropy scaled by the weight of that token.

    Position t predicts token t+1 and is scaled by weights[:, t+1]; padded targets contribute 0.
    The sum is divided by B * (max_text_len - 1), a constant that does not depend on how far the
    batch was padded, so dynamic padding gives the numbers of padding to max_text_len.
    """
    batch_size = input_ids.shape[0]
    token_nll = F.cross_entropy(at_least_float32(logits[:, :-1].transpose(1, 2)), input_ids[:, 1:], reduction="none")
    scale = weights[:, 1:] * attention_mask[:, 1:].to(weights.dtype)
    return (token_nll * scale).sum() / (batch_size * (max_text_len - 1))


def answer_nll(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """NLL of the answer tokens. `labels` is -100 wherever the position is not an answer token.

    reduction="mean": mean over all answer tokens of the batch; "none": one mean per example.
    """
    shifted_logits = at_least_float32(logits[:, :-1])
    shifted_labels = labels[:, 1:]
    token_nll = F.cross_entropy(shifted_logits.transpose(1, 2), shifted_labels, ignore_index=-100, reduction="none")
    is_answer = (shifted_labels != -100).to(token_nll.dtype)
    if reduction == "mean":
        return (token_nll * is_answer).sum() / is_answer.sum().clamp(min=1)
    if reduction == "none":
        return (token_nll * is_answer).sum(1) / is_answer.sum(1).clamp(min=1)
    raise ValueError(f"unknown reduction {reduction!r}")


def kl_locality(logits_before: Tensor, logits_after: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over unmasked positions of KL(p_before || p_after), computed in float32 (or float64)."""
    log_p = F.log_softmax(at_least_float32(logits_before), dim=-1)
    log_q = F.log_softmax(at_least_float32(logits_after), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    mask = attention_mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1)
