"""The three losses of the method against explicit loops, and their padding invariances."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from util import answer_nll, kl_locality, weighted_lm_loss

VOCAB = 11
PAD_ID = 0


def log_prob(logits_row, token):
    return torch.log_softmax(logits_row, dim=-1)[token].item()


def manual_weighted_loss(logits, ids, mask, weights, max_text_len):
    total = 0.0
    batch, length = ids.shape
    for b in range(batch):
        for t in range(length - 1):
            if mask[b, t + 1]:
                total += -log_prob(logits[b, t], ids[b, t + 1]) * weights[b, t + 1].item()
    return total / (batch * (max_text_len - 1))


@pytest.fixture
def batch():
    """Two documents of 6 and 4 tokens, right-padded to 6, float64 logits and random weights."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (2, 6), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    ids[1, 4:] = PAD_ID
    logits = torch.randn(2, 6, VOCAB, generator=generator, dtype=torch.float64)
    weights = torch.rand(2, 6, generator=generator, dtype=torch.float64) * 2
    return logits, ids, mask, weights


def test_weighted_lm_loss_matches_explicit_loop(batch):
    logits, ids, mask, weights = batch
    for max_text_len in (6, 32):
        expected = manual_weighted_loss(logits, ids, mask, weights, max_text_len)
        got = weighted_lm_loss(logits, ids, mask, weights, max_text_len)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(expected, rel=1e-12)


def test_weighted_lm_loss_ignores_weights_and_logits_at_padding(batch):
    logits, ids, mask, weights = batch
    base = weighted_lm_loss(logits, ids, mask, weights, 32)
    changed_weights, changed_logits = weights.clone(), logits.clone()
    changed_weights[1, 4:] = 100.0
    changed_logits[1, 4:] = torch.randn(2, VOCAB, dtype=torch.float64)
    assert weighted_lm_loss(changed_logits, ids, mask, changed_weights, 32).item() == pytest.approx(
        base.item(), rel=1e-12
    )
    # the weight of a real target token does count
    changed_weights[0, 3] += 1.0
    assert weighted_lm_loss(logits, ids, mask, changed_weights, 32).item() > base.item()


def test_weighted_lm_loss_unchanged_by_extra_pad_columns(batch):
    logits, ids, mask, weights = batch
    extra = 5
    padded = (
        torch.cat([logits, torch.randn(2, extra, VOCAB, dtype=torch.float64)], 1),
        torch.cat([ids, torch.full((2, extra), PAD_ID)], 1),
        torch.cat([mask, torch.zeros(2, extra, dtype=torch.long)], 1),
        torch.cat([weights, torch.rand(2, extra, dtype=torch.float64) + 1], 1),
    )
    assert weighted_lm_loss(*padded, 32).item() == pytest.approx(
        weighted_lm_loss(logits, ids, mask, weights, 32).item(), rel=1e-12
    )


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).double().eval()


def test_dynamic_padding_equals_padding_to_max_text_len(tiny_lm, batch):
    """A real model on the batch padded to its longest and to max_text_len gives one loss."""
    _, ids, mask, weights = batch
    max_text_len = 16
    with torch.no_grad():
        dynamic = weighted_lm_loss(tiny_lm(ids, attention_mask=mask).logits, ids, mask, weights, max_text_len)
        extra = max_text_len - ids.shape[1]
        full_ids = torch.cat([ids, torch.full((2, extra), PAD_ID)], 1)
        full_mask = torch.cat([mask, torch.zeros(2, extra, dtype=torch.long)], 1)
        full_weights = torch.cat([weights, torch.ones(2, extra, dtype=torch.float64)], 1)
        full = weighted_lm_loss(
            tiny_lm(full_ids, attention_mask=full_mask).logits, full_ids, full_mask, full_weights, max_text_len
        )
    assert full.item() == pytest.approx(dynamic.item(), rel=1e-10)


def test_uniform_weights_reproduce_the_hf_lm_loss(tiny_lm, batch):
    _, ids, mask, _ = batch
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = tiny_lm(ids, attention_mask=mask, labels=labels)
        ours = weighted_lm_loss(out.logits, ids, mask, torch.ones_like(mask, dtype=torch.float64), 32)
    targets = mask[:, 1:].sum().item()  # 5 + 3 predicted tokens
    assert targets == 8
    # HF averages over the targets; ours divides the same sum by B * (max_text_len - 1)
    assert ours.item() * 2 * 31 / targets == pytest.approx(out.loss.item(), rel=1e-5)


def test_answer_nll_matches_explicit_loop():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, VOCAB, generator=generator, dtype=torch.float64)
    labels = torch.full((3, 7), -100)
    labels[0, 4:6] = torch.tensor([3, 5])  # two answer tokens
    labels[1, 2:7] = torch.tensor([1, 2, 3, 4, 9])
    # row 2 has no answer token at all
    per_example, all_nll, count = [], 0.0, 0
    for b in range(3):
        nlls = [-log_prob(logits[b, t - 1], labels[b, t]) for t in range(1, 7) if labels[b, t] != -100]
        per_example.append(sum(nlls) / len(nlls) if nlls else 0.0)
        all_nll, count = all_nll + sum(nlls), count + len(nlls)
    assert answer_nll(logits, labels).item() == pytest.approx(all_nll / count, rel=1e-12)
    assert answer_nll(logits, labels, reduction="none").tolist() == pytest.approx(per_example, rel=1e-12)
    with pytest.raises(ValueError):
        answer_nll(logits, labels, reduction="sum")


def test_kl_locality_zero_for_identical_logits_and_matches_manual_kl():
    generator = torch.Generator().manual_seed(2)
    before = torch.randn(2, 5, VOCAB, generator=generator, dtype=torch.float64)
    after = before + 0.5 * torch.randn(2, 5, VOCAB, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert kl_locality(before, before.clone(), mask).item() == 0.0
    total, count = 0.0, 0
    for b in range(2):
        for t in range(5):
            if mask[b, t]:
                p = torch.softmax(before[b, t], -1).tolist()
                q = torch.softmax(after[b, t], -1).tolist()
                total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
                count += 1
    got = kl_locality(before, after, mask).item()
    assert got > 0
    assert got == pytest.approx(total / count, rel=1e-10)
    # positions outside the mask do not count
    moved = after.clone()
    moved[0, 3:] += 10 * torch.randn(2, VOCAB, dtype=torch.float64)
    assert kl_locality(before, moved, mask).item() == pytest.approx(got, rel=1e-12)


def test_losses_upcast_half_precision_logits_to_float32():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 4, VOCAB, generator=generator).to(torch.bfloat16)
    ids = torch.randint(0, VOCAB, (1, 4), generator=generator)
    mask = torch.ones(1, 4, dtype=torch.long)
    kl = kl_locality(logits, logits.flip(-1), mask)
    assert kl.dtype == torch.float32
    assert kl.item() == pytest.approx(kl_locality(logits.float(), logits.flip(-1).float(), mask).item(), rel=1e-6)
    nll = answer_nll(logits, ids)
    assert nll.dtype == torch.float32
    loss = weighted_lm_loss(logits, ids, mask, torch.ones(1, 4), 4)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(manual_weighted_loss(logits.float(), ids, mask, torch.ones(1, 4), 4), rel=1e-5)
