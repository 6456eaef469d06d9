"""The reference's behaviour on the real-data path, each against an independent computation:
decoding, top-K and answer-alternative scoring, answer NLL, light-tuning's stopping rule, batch
order of meta-training, dropout modes of the meta-objective, and the length cut."""

import copy
import logging
import math
import random

import pytest
import torch
from conftest import REPO, compose
from omegaconf import OmegaConf
from transformers import GPT2Config, GPT2LMHeadModel

import subroutines
import util
from exp_datasets import Example, QACollator, load_split
from exp_datasets.answer_spans import make_batch
from meta_objective import MetaSettings, outer_loss
from meta_train import batched, epoch_order
from plumbing import errors, loading
from subroutines import Decoding, generate_answers, reference_stop, score_predictions, summarize
from weight_model import build_weight_model


@pytest.fixture(scope="module")
def parts(tiny_world_small):
    tokenizer = loading.load_tokenizer(tiny_world_small.base_model)
    model = loading.load_causal_lm(tiny_world_small.base_model, attn_implementation="eager").double().eval()
    dataset_cfg = tiny_world_small.dataset_cfg
    return dict(
        tokenizer=tokenizer,
        model=model,
        dataset=dataset_cfg,
        collator=QACollator.from_config(tokenizer, dataset_cfg),
        test=load_split(dataset_cfg, "test"),
    )


# ---------------------------------------------------------------------------------------------
# Decoding


def reference_generate(model, tokenizer, question, top_k):
    """One question at a time, with the reference's arguments (subroutines.qa_eval), its answers cut
    from the decoded text after the decoded question."""
    ids = tokenizer(question, return_tensors="pt")["input_ids"]
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        use_cache=True,
        max_length=ids.shape[1] + 16,
        num_return_sequences=top_k,
        num_beam_groups=4,
        num_beams=12,
        diversity_penalty=10.0,
        early_stopping=True,
        pad_token_id=tokenizer.eos_token_id,
    )
    decoded = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    prompt = tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()
    return [t[len(prompt) :].strip() for t in decoded]


@torch.no_grad()
def test_batched_beam_decoding_equals_the_reference_generate_call(parts):
    examples = parts["test"][:6]
    batch = parts["collator"](examples)
    for top_k in (1, 3):
        ours = generate_answers(
            parts["model"], parts["tokenizer"], batch["gen_ids"], batch["gen_mask"], Decoding(), top_k
        )
        for example, answers in zip(examples, ours):
            assert answers == reference_generate(parts["model"], parts["tokenizer"], example.question, top_k)


@torch.no_grad()
def test_top1_of_a_top_k_search_is_the_top1_search(parts):
    batch = parts["collator"](parts["test"][:6])
    one = generate_answers(parts["model"], parts["tokenizer"], batch["gen_ids"], batch["gen_mask"], Decoding(), 1)
    four = generate_answers(parts["model"], parts["tokenizer"], batch["gen_ids"], batch["gen_mask"], Decoding(), 4)
    assert [a[0] for a in one] == [a[0] for a in four]


def test_beams_grow_for_large_k_and_greedy_refuses_top_k():
    assert Decoding().beams_for(4) == 12 and Decoding().beams_for(11) == 12
    assert Decoding().beams_for(12) == 16 and Decoding().beams_for(13) == 16
    with pytest.raises(errors.UsageError, match="needs decoding=beam"):
        Decoding(method="greedy").check(4)


# ---------------------------------------------------------------------------------------------
# Scoring


def test_top_k_em_is_any_of_k_and_f1_the_mean_over_k():
    scores = score_predictions(["Paris", "London", "the Paris city"], ["Paris"])
    third = 2 * 0.5 * 1.0 / 1.5  # "paris city" against "paris": precision 1/2, recall 1
    assert scores["em"] == 1.0 and scores["f1"] == 1.0 and scores["em_at_k"] == 1.0
    assert scores["f1s"] == pytest.approx([1.0, 0.0, third])
    assert scores["f1_at_k"] == pytest.approx((1.0 + 0.0 + third) / 3) and scores["max_f1"] == 1.0
    scores = score_predictions(["London", "Paris"], ["Paris"])
    assert (scores["em"], scores["f1"], scores["em_at_k"], scores["max_f1"], scores["f1_at_k"]) == (0, 0, 1, 1, 0.5)


def test_prediction_scores_against_its_best_gold_alternative(tmp_path):
    example = Example(text="t", question="q", answer="Jordan", doc_id="0", answers=["Thomas Jordan", "Jordan"])
    assert example.golds("all") == ["Thomas Jordan", "Jordan"] and example.golds("shortest") == ["Jordan"]
    both = score_predictions(["Thomas Jordan"], example.golds("all"))
    assert both["em"] == 1.0 and both["f1"] == 1.0
    shortest = score_predictions(["Thomas Jordan"], example.golds("shortest"))
    assert shortest["em"] == 0.0 and shortest["f1"] == pytest.approx(2 / 3)
    assert score_predictions(["Jordan"], example.golds("all"))["f1"] == 1.0  # the other alternative counts too
    # a StreamingQA CSV: training target = shortest alternative, scoring sees all of them
    (tmp_path / "test.csv").write_text('text,question,answers\n"A text.",Who?,Thomas Jordan\\Jordan\n')
    cfg = OmegaConf.load(REPO / "conf/dataset/streamingqa.yaml")
    cfg.data_dir = str(tmp_path)
    (loaded,) = load_split(cfg, "test")
    assert loaded.answer == "Jordan" and loaded.answers == ["Thomas Jordan", "Jordan"]


def test_answer_nll_is_a_mean_over_answer_tokens():
    rows = [dict(nll=1.0, n_answer_tokens=1), dict(nll=3.0, n_answer_tokens=3)]
    assert summarize(rows, top_k=None, with_nll=True)["nll"] == pytest.approx((1.0 + 9.0) / 4)


# ---------------------------------------------------------------------------------------------
# Light tuning


@pytest.mark.parametrize(
    "metric,values,stop_at",
    [
        ("max_f1", [0.1, 0.3, 0.2, 0.2, 0.2], 5),  # best of the last 3 (0.2) < best before (0.3)
        ("max_f1", [0.1, 0.3, 0.3, 0.2, 0.2, 0.2], 6),  # a tie with the best before continues
        ("max_f1", [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5], None),
        ("nll", [2.0, 1.0, 1.0, 1.5, 1.2, 1.1], 6),  # ties continue for nll too
    ],
)
def test_reference_stopping_rule_on_scripted_validations(metric, values, stop_at):
    history = []
    stopped = None
    for i, value in enumerate(values, start=1):
        history.append({"nll": 1.0, metric: value})
        if reference_stop(history, metric, patience=3):
            stopped = i
            break
    assert stopped == stop_at


def test_a_metric_that_never_moves_falls_back_to_nll():
    history = [dict(max_f1=0.0, nll=n) for n in (3.0, 2.0, 2.5, 2.6, 2.7)]
    assert reference_stop(history, "max_f1", patience=3)
    history = [dict(max_f1=0.0, nll=n) for n in (3.0, 2.0, 1.9, 2.6, 2.7)]
    assert not reference_stop(history, "max_f1", patience=3)


def test_light_tune_runs_past_epochs_validates_on_schedule_and_restores_the_best(parts, monkeypatch):
    scripted = iter([0.1, 0.3, 0.3, 0.2, 0.25, 0.2, 0.9])
    states = []

    def fake_evaluate(model, *args, **kwargs):
        states.append([p.detach().clone() for p in model.parameters()])
        value = next(scripted)
        return [], dict(em=value, f1=value, max_f1=value, nll=1.0 - value, n_questions=1)

    monkeypatch.setattr(subroutines, "evaluate_qa", fake_evaluate)
    model = copy.deepcopy(parts["model"])
    train = load_split(parts["dataset"], "qa_train")[:5]
    settings = subroutines.LightTuneSettings(lr=1e-2, batch_size=2, val_steps=2, patience=3)
    history = subroutines.light_tune(
        model, parts["tokenizer"], train, train, parts["collator"], "cpu", settings, progress=False
    )
    # validations at 0, 2, ..., 10 steps; 6 validations over 10 steps = 3.3 passes of 3 batches; the
    # sixth (0.2) makes the best of the last three (0.25) worse than the best before (0.3)
    assert [h["step"] for h in history] == [0, 2, 4, 6, 8, 10]
    # the first validation reaching the best value (0.3, at step 2) is restored
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), states[1]))
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), states[2]))


# ---------------------------------------------------------------------------------------------
# Meta-training batches


def test_row_shuffled_batches_hold_distinct_documents_in_expectation():
    rng = random.Random(0)
    rows_per_doc = [rng.randint(1, 6) for _ in range(40)]
    examples = [
        Example(text=f"doc {d}", question=f"q{i}", answer="a", doc_id=str(d), group=str(d))
        for d, n in enumerate(rows_per_doc)
        for i in range(n)
    ]
    size, n = 6, len(examples)
    # a full batch of a random permutation is a uniform random subset of `size` rows
    expected = sum(1 - math.comb(n - k, size) / math.comb(n, size) for k in rows_per_doc)
    means = {}
    for order in ("rows", "documents"):
        counts = [
            len({e.doc_id for e in batch})
            for seed in range(300)
            for batch in batched(epoch_order(examples, order, random.Random(seed)), size)
            if len(batch) == size
        ]
        means[order] = sum(counts) / len(counts)
    assert means["rows"] == pytest.approx(expected, abs=0.05)
    assert means["documents"] < expected - 2
    assert [len(b) for b in batched(list(range(13)), 6)] == [6, 6, 1]  # the trailing partial batch stays


# ---------------------------------------------------------------------------------------------
# Dropout in the meta-objective


@pytest.mark.parametrize("backend", ["higher", "torch_func"])
def test_inner_loop_has_dropout_and_the_loss_after_it_has_none(parts, backend):
    config = copy.deepcopy(parts["model"].config)
    config.update(dict(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    base = GPT2LMHeadModel(config).double()
    collator = parts["collator"]
    batch = make_batch(collator, parts["test"][:3], "cpu")
    weights = torch.ones_like(batch["text_ids"], dtype=torch.float64) * batch["text_mask"]
    settings = MetaSettings(inner_lr=0.5, backend=backend, max_text_len=collator.max_text_len, c_kl=0.0)

    def run(seed):
        torch.manual_seed(seed)
        return outer_loss(base, weights, batch, {}, settings, differentiable=False)

    base.train()
    _, metrics, updated = run(1)
    assert base.training
    assert not all(torch.equal(a, b) for a, b in zip(updated, run(2)[2]))  # dropout in the inner steps
    after = copy.deepcopy(base).eval()
    with torch.no_grad():
        for p, value in zip(after.parameters(), updated):
            p.copy_(value)
        logits = after(input_ids=batch["qa_ids"], attention_mask=batch["qa_mask"]).logits
    assert metrics["qa_loss"] == pytest.approx(util.answer_nll(logits, batch["qa_labels"]).item(), rel=1e-12)
    base.eval()  # meta_dropout=false: no randomness anywhere
    assert all(torch.equal(a, b) for a, b in zip(run(1)[2], run(2)[2]))


# ---------------------------------------------------------------------------------------------
# Lengths


def test_a_5000_token_document_is_cut_to_a_256_position_model(parts, caplog):
    tokenizer = parts["tokenizer"]
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=16, n_layer=1, n_head=2))
    words = " ".join(e.text for e in parts["test"])
    text = words
    while len(tokenizer(text)["input_ids"]) < 5000:
        text += " " + words
    cfg = OmegaConf.load(REPO / "conf/dataset/streamingqa.yaml")  # max_text_len 1024, questions 128
    with caplog.at_level(logging.INFO, logger="exp_datasets.collate"):
        collator = QACollator.from_config(tokenizer, cfg, models=[model])
    lines = [r.message for r in caplog.records if r.name == "exp_datasets.collate"]
    assert len(lines) == 1 and "cut to the models' 256 positions" in lines[0]
    long_question = " ".join([parts["test"][0].question] * 60)
    example = Example(text=text, question=long_question, answer=parts["test"][0].answer, doc_id="0")
    batch = collator([example])
    assert batch["text_ids"].shape[1] == 256 and batch["qa_ids"].shape[1] <= 256
    with torch.no_grad():
        model(input_ids=batch["text_ids"], attention_mask=batch["text_mask"])
        model(input_ids=batch["qa_ids"], attention_mask=batch["qa_mask"])
    uniform = build_weight_model(OmegaConf.load(REPO / "conf/model/uniform.yaml"), tokenizer)
    subroutines.weighted_train(model, uniform, [text], collator, "cpu", progress=False)
    rows, _ = subroutines.evaluate_qa(
        model, tokenizer, [example], collator, "cpu", ["em", "ppl"], decoding=Decoding(method="greedy"), progress=False
    )
    assert len(rows) == 1
    # the weight model's body bounds the lengths too
    body = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=16, n_layer=1, n_head=2))
    assert QACollator.from_config(tokenizer, cfg, models=[model, body]).max_text_len == 128


# ---------------------------------------------------------------------------------------------
# Configuration defaults


@pytest.mark.parametrize("dataset", ["streamingqa", "squad", "archivalqa", "tiny_world"])
def test_reference_defaults_per_dataset(dataset):
    train = compose("conf", ["task=train", "model=CaMeLS", f"dataset={dataset}"])
    body = OmegaConf.to_container(train.model, resolve=False)["pretrained_model"]
    assert body == ("${tiny_world:base_model}" if dataset == "tiny_world" else "distilgpt2")
    assert train.dataset.qa_eos and train.batch_order == "rows" and train.meta_dropout
    assert compose("qa_conf", [f"dataset={dataset}"]).dataset.qa_eos
    evaluation = compose("conf", ["task=eval", f"dataset={dataset}", "downsample_to=50"])
    assert (
        evaluation.decoding,
        evaluation.num_beams,
        evaluation.num_beam_groups,
        evaluation.diversity_penalty,
        evaluation.max_new_tokens,
    ) == ("beam", 12, 4, 10.0, 16)
    assert (
        evaluation.lt_val_steps,
        evaluation.lt_patience,
        evaluation.lt_epochs,
        evaluation.lt_grad_clip_thresh,
        evaluation.lt_val_questions,
        evaluation.answer_match,
    ) == (16, 3, None, 750, 50, "all")


def test_validation_kl_reads_its_own_web_text(tiny_world_small, tmp_path):
    from test_meta_train import make_trainer

    trainer = make_trainer(tiny_world_small, tmp_path, "update_batch_size=2", "val_batches=1", "inner_lr=0.05")
    shared = trainer.validate()["kl_web_text"]
    trainer.val_web_texts = ["Numbers one two three, then a long list of other words about rivers and towns."]
    assert trainer.validate()["kl_web_text"] != pytest.approx(shared, rel=1e-6)
    ids, _ = trainer.loc_batches(random.Random(0))["web_text"]  # training still draws from its own texts
    assert torch.equal(ids, trainer.collator.encode_texts(trainer.web_texts)[0])


def test_checkpointed_meta_gradient_keeps_the_dropout_of_each_call(parts):
    """With dropout on, recomputation in the backward pass (grad_checkpointing) must replay the
    inner steps in train mode and the loss after them in eval mode: the same meta-gradient."""
    config = copy.deepcopy(parts["model"].config)
    config.update(dict(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3))
    torch.manual_seed(0)
    base = GPT2LMHeadModel(config).double().train()
    collator = parts["collator"]
    batch = make_batch(collator, parts["test"][:2], "cpu")
    weights = (torch.ones_like(batch["text_ids"], dtype=torch.float64) * batch["text_mask"]).requires_grad_()
    grads = []
    for checkpointed in (False, True):
        settings = MetaSettings(
            inner_lr=0.5,
            backend="torch_func",
            max_text_len=collator.max_text_len,
            c_kl=0.0,
            grad_checkpointing=checkpointed,
        )
        torch.manual_seed(3)
        loss, _, _ = outer_loss(base, weights, batch, {}, settings, differentiable=True)
        grads.append(torch.autograd.grad(loss, weights)[0])
        assert base.training
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)
