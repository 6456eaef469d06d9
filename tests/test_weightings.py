"""The weightings read from the adapted model (loss_weightings.py): surprisal and excess_loss weights
against per-token losses computed here by hand, top-k selection, weights that follow the model as it
learns, online adaptation with them, and the run.py / demo.py paths that bind them to the base model."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from transformers import GPT2Config, GPT2LMHeadModel

import loss_weightings as L
import weight_model as W
from exp_datasets import pad
from plumbing import environment, errors, loading
from subroutines import AdaptationSettings, weighted_train

VOCAB = 40


def micro_gpt2(seed, dropout=0.0):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return GPT2LMHeadModel(config).double().eval()


def documents(seed, lengths):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def config(name, **options):
    return OmegaConf.merge(OmegaConf.load(environment.REPO_ROOT / "conf" / "model" / f"{name}.yaml"), options)


def hand_losses(model, ids):
    """The loss of each token after the first, one cross_entropy per position, the model in eval mode."""
    logits = model.eval()(input_ids=torch.tensor([ids])).logits[0]
    return [F.cross_entropy(logits[t - 1], torch.tensor(ids[t])).item() for t in range(1, len(ids))]


def kept_positions(scores, percent):
    """Indices (into `scores`) of the ceil(percent%) highest scores, and of any score tied with the last."""
    cutoff = sorted(scores, reverse=True)[math.ceil(len(scores) * percent / 100) - 1]
    return {i for i, score in enumerate(scores) if score >= cutoff}


def mean_one(values):
    """[0 for the first token] + values, scaled to mean 1 over all len(values) + 1 tokens."""
    total = sum(values)
    return [0.0] + [v * (len(values) + 1) / total for v in values]


def hand_surprisal(model, ids, percent=100, temperature=1.0):
    losses = hand_losses(model, ids)
    kept = kept_positions(losses, percent)
    return mean_one([loss ** (1 / temperature) if i in kept else 0.0 for i, loss in enumerate(losses)])


def hand_excess(model, reference, ids, percent):
    excess = [a - b for a, b in zip(hand_losses(model, ids), hand_losses(reference, ids))]
    kept = kept_positions(excess, percent)
    return mean_one([1.0 if i in kept else 0.0 for i in range(len(excess))])


def weigh(weight_model, docs):
    """Weights of `docs` as one right-padded batch, each row cut to its document's length."""
    ids, mask = pad(docs, 0)
    weights = weight_model(ids, mask)
    assert (weights[mask == 0] == 0).all()
    return [weights[row, : len(doc)].tolist() for row, doc in enumerate(docs)]


# ---------------------------------------------------------------------------------------------
# The weights against hand computations


@pytest.mark.parametrize("percent,temperature", [(100, 1.0), (100, 0.5), (40, 1.0), (70, 3.0)])
def test_surprisal_weights_are_the_models_token_losses_by_hand(percent, temperature):
    model = micro_gpt2(0, dropout=0.5).train()  # as during the stream: the weights must not see dropout
    weighting = W.build_weight_model(config("surprisal", top_k_percent=percent, temperature=temperature), None)
    docs = documents(1, [12, 7])
    got = weigh(weighting.bind(model), docs)
    assert model.training, "the adapted model's mode is restored"
    for doc, row in zip(docs, got):
        assert row == pytest.approx(hand_surprisal(copy.deepcopy(model), doc, percent, temperature), rel=1e-6)
        assert sum(row) == pytest.approx(len(doc))


def test_top_k_keeps_the_highest_scores_and_every_tie_at_the_cut():
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0, 7.0, 2.0, 0.0], [9.0, 4.0, 4.0, 4.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
    candidates = L.predicted_positions(mask)  # the first token (score 9) is never a candidate
    assert candidates.tolist() == [[False] + [True] * 6, [False, True, True, True, True, False, False]]
    # 34% of 6 candidates -> 3 kept (7, 5, 3); of 4 candidates -> 2 kept, but three tie at 4.0
    kept = L.keep_top_percent(scores, candidates, 34)
    assert kept.tolist() == [
        [False, False, True, True, True, False, False],
        [False, True, True, True, False, False, False],
    ]
    assert L.keep_top_percent(scores, candidates, 100).equal(candidates)
    assert L.keep_top_percent(scores, candidates, 1).sum(1).tolist() == [1, 3]
    # 8.8% of 375 is 33 (not 34, although 375 * 8.8 / 100 is 33.00000000000001 in floating point)
    assert L.keep_top_percent(torch.arange(375.0)[None], torch.ones(1, 375, dtype=torch.bool), 8.8).sum() == 33


def test_surprisal_weights_follow_the_model_as_it_learns():
    model = micro_gpt2(2)
    weighting = W.build_weight_model(config("surprisal", top_k_percent=100, temperature=1.0), None).bind(model)
    doc = documents(3, [10])[0]
    before = weigh(weighting, [doc])[0]
    target = max(range(1, len(doc)), key=before.__getitem__)  # the token of highest loss
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):  # SGD on that token's loss alone
        logits = model(input_ids=torch.tensor([doc])).logits[0]
        F.cross_entropy(logits[target - 1], torch.tensor(doc[target])).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = weigh(weighting, [doc])[0]
    assert after == pytest.approx(hand_surprisal(model, doc), rel=1e-6)
    assert after[target] < 0.5 * before[target]


def test_excess_loss_is_the_adapted_loss_minus_the_reference_loss(tmp_path):
    model = micro_gpt2(4)
    docs = documents(5, [11, 9])
    weighting = W.build_weight_model(config("excess_loss", top_k_percent=50), None).bind(model)
    # nothing adapted yet: the excess loss is 0 everywhere, a tie that keeps every token
    assert weigh(weighting, docs) == [pytest.approx(mean_one([1.0] * (len(d) - 1))) for d in docs]
    start = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    for doc in documents(6, [12, 12]):  # adapt on other documents: the losses on `docs` move
        logits = model(input_ids=torch.tensor([doc])).logits[0]
        F.cross_entropy(logits[:-1], torch.tensor(doc[1:])).backward()
        optimizer.step()
        optimizer.zero_grad()
    for doc, row in zip(docs, weigh(weighting, docs)):
        assert row == pytest.approx(hand_excess(model, start, doc, 50), rel=1e-6)
        assert sum(w > 0 for w in row) == math.ceil((len(doc) - 1) / 2)

    # a reference model of its own (a folder) stays the reference when bound
    other = micro_gpt2(7)
    other.float().save_pretrained(tmp_path / "reference")
    options = dict(top_k_percent=30, reference_model=str(tmp_path / "reference"))
    weighting = W.build_weight_model(config("excess_loss", **options), None).bind(model)
    reference = loading.load_causal_lm(tmp_path / "reference")
    scores = weighting.token_scores(*pad(docs[:1], 0))[0, 1:].tolist()
    assert scores == pytest.approx(
        [a - b for a, b in zip(hand_losses(model, docs[0]), hand_losses(reference, docs[0]))], abs=1e-5
    )


def test_bad_options_and_an_unbound_weighting_are_one_line_errors(tmp_path):
    from test_weight_model import byte_level_tokenizer

    for options in ({"top_k_percent": 0}, {"top_k_percent": 101}, {"temperature": 0}):
        with pytest.raises(errors.UsageError, match="is invalid"):
            W.build_weight_model(config("surprisal", **options), None)
    ids, mask = pad(documents(8, [5]), 0)
    for name in ("surprisal", "excess_loss"):
        with pytest.raises(errors.UsageError, match="call bind") as caught:
            W.build_weight_model(config(name), None)(ids, mask)
        assert "\n" not in str(caught.value)
    micro_gpt2(9).save_pretrained(tmp_path / "small_vocab")
    tokenizer = byte_level_tokenizer(["a text with more tokens than the reference has embeddings"] * 4, 120)
    with pytest.raises(errors.UsageError, match="token embeddings"):
        W.build_weight_model(config("excess_loss", reference_model=str(tmp_path / "small_vocab")), tokenizer)


# ---------------------------------------------------------------------------------------------
# Online adaptation with them


class IdCollator:
    """Documents written as space-separated token ids."""

    max_text_len = 16

    def encode_texts(self, texts):
        return pad([[int(t) for t in text.split()][: self.max_text_len] for text in texts], 0)


@pytest.mark.parametrize("name", ["surprisal", "excess_loss"])
def test_weighted_train_steps_on_the_weights_of_the_model_just_before_each_step(name):
    docs = documents(10, [9, 14, 6])
    start = micro_gpt2(11)
    options = dict(top_k_percent=60, temperature=0.5) if name == "surprisal" else dict(top_k_percent=60)
    model = copy.deepcopy(start)
    weighted_train(
        model,
        W.build_weight_model(config(name, **options), None).bind(model),
        [" ".join(map(str, d)) for d in docs],
        IdCollator(),
        "cpu",
        AdaptationSettings(optimizer="sgd", lr=0.5, grad_clip_thresh=1e9),
        progress=False,
    )

    expected = copy.deepcopy(start)
    for doc in docs:  # one SGD step per document on its weighted loss, weights from the model of that moment
        weights = (
            hand_surprisal(expected, doc, 60, 0.5) if name == "surprisal" else hand_excess(expected, start, doc, 60)
        )
        logits = expected.train()(input_ids=torch.tensor([doc])).logits[0]
        losses = F.cross_entropy(logits[:-1], torch.tensor(doc[1:]), reduction="none")
        loss = (losses * torch.tensor(weights[1:], dtype=losses.dtype)).sum() / (IdCollator.max_text_len - 1)
        grads = torch.autograd.grad(loss, list(expected.parameters()))
        with torch.no_grad():
            for parameter, grad in zip(expected.parameters(), grads):
                parameter -= 0.5 * grad
    for got, want in zip(model.parameters(), expected.parameters()):
        assert torch.allclose(got, want, atol=1e-5)
    assert not all(torch.allclose(a, b) for a, b in zip(model.parameters(), start.parameters()))


# ---------------------------------------------------------------------------------------------
# run.py and demo.py bind them to the base model


def test_run_adapts_with_each_weighting_bound_to_its_base_model(tiny_world_small, tmp_path):
    from test_eval import compose_config

    import evaluation

    for name in ("surprisal", "excess_loss"):
        summary = evaluation.evaluate(
            compose_config(
                tiny_world_small, [f"model={name}", "eval=[ppl]", "eval_init=true", "downsample_to=3", "lr=1e-3"]
            ),
            tmp_path / name,
        )
        assert summary["method"] == name and summary["adapts"] is True
        assert summary["nll"] < summary["init"]["nll"]


def test_demo_describes_the_weightings_read_from_the_base_model(tiny_world_small, tmp_path):
    import demo

    cfg = OmegaConf.create(
        {
            "base_model": str(tiny_world_small.base_model),
            "dataset": "tiny_world",
            "world_overrides": [f"dataset.data_dir={tiny_world_small.data_dir}"],
            "all_methods": {"surprisal": ["model=surprisal"], "excess_loss": ["model=excess_loss"]},
            "eval_overrides": [],
            "test_downsample_to": 3,
            "test_seeds": [1],
            "heatmap_documents": 1,
        }
    )
    demo.describe_weightings(cfg, tmp_path)
    rows = [
        line.split("|")[1].strip()
        for line in (tmp_path / "answer_mass.md").read_text().splitlines()
        if line.startswith("| ") and "%" in line
    ]
    assert rows == ["surprisal", "excess_loss"]
    for name in rows:
        assert (tmp_path / f"weights_{name}.html").read_text().count("<span") > 10
