"""Online-adaptation evaluation: QA scoring, weighted stream training, light tuning, run.py."""

import copy
import hashlib
import importlib.util
import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, compose, run_script, world_overrides
from omegaconf import OmegaConf
from transformers import GPT2Config, GPT2LMHeadModel

import adaptation
import evaluation
import util
import weight_model as W
from exp_datasets import QACollator, load_split
from plumbing import errors, loading
from subroutines import AdaptationSettings, Decoding, LightTuneSettings, evaluate_qa, light_tune, weighted_train

SUMMARY_KEYS = {
    "method",
    "adapts",
    "lr",
    "seed",
    "dataset",
    "split",
    "base_model",
    "downsample_to",
    "optimizer",
    "n_epochs",
    "n_documents",
    "n_questions",
    "em",
    "f1",
    "max_f1",
    "top_k",
    "em_at_k",
    "f1_at_k",
    "decoding",
    "nll",
    "init",
    "unrelated",
    "diverged",
    "wall_time_s",
    "run_dir",
    "em_percent",
    "f1_percent",
    "max_f1_percent",
}
GREEDY4 = Decoding(method="greedy", max_new_tokens=4, first_line=True)


@pytest.fixture(scope="module")
def world(tiny_world_small):
    return tiny_world_small


@pytest.fixture(scope="module")
def world_parts(world):
    tokenizer = loading.load_tokenizer(world.base_model)
    model = loading.load_causal_lm(world.base_model).double().eval()
    dataset_cfg = compose_config(world, []).dataset
    return SimpleNamespace(
        tokenizer=tokenizer,
        model=model,
        dataset=dataset_cfg,
        collator=QACollator.from_config(tokenizer, dataset_cfg),
        test=load_split(dataset_cfg, "test"),
    )


def compose_config(world, overrides):
    return compose(
        "conf",
        [*world_overrides(world), "dataset=tiny_world", "device=cpu", "progress=false", "max_new_tokens=4", *overrides],
    )


# ---------------------------------------------------------------------------------------------
# QA scoring against a hand-written greedy decoder


def greedy_answer(model, tokenizer, question, max_new_tokens):
    ids = tokenizer(question, return_tensors="pt")["input_ids"]
    for _ in range(max_new_tokens):
        next_id = model(input_ids=ids).logits[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    text = tokenizer.decode(ids[0, -max_new_tokens:], skip_special_tokens=True)
    return text.strip().split("\n")[0].strip()


def manual_answer_nll(model, tokenizer, question, answer, qa_eos):
    q, a = tokenizer(question)["input_ids"], tokenizer(" " + answer)["input_ids"]
    a = a + [tokenizer.eos_token_id] if qa_eos else a
    logits = model(input_ids=torch.tensor([q + a])).logits[0]
    return F.cross_entropy(logits[len(q) - 1 : -1], torch.tensor(a)).item()


@torch.no_grad()
def test_evaluate_qa_matches_greedy_decoding_and_metrics(world_parts):
    parts = world_parts
    examples = parts.test[:5]
    rows, summary = evaluate_qa(
        parts.model,
        parts.tokenizer,
        examples,
        parts.collator,
        "cpu",
        ["em", "ppl"],
        batch_size=3,
        decoding=GREEDY4,
        progress=False,
    )
    for example, row in zip(examples, rows):
        prediction = greedy_answer(parts.model, parts.tokenizer, example.question, 4)
        assert row["prediction"] == prediction
        assert row["em"] == util.exact_match(prediction, example.answer)
        assert row["f1"] == row["max_f1"] == util.f1_score(prediction, example.answer)
        assert row["nll"] == pytest.approx(
            manual_answer_nll(parts.model, parts.tokenizer, example.question, example.answer, parts.collator.qa_eos),
            rel=1e-6,
        )
    # the answer NLL is a mean over all answer tokens: a question weighs by its answer's length
    n_tokens = [len(parts.collator.answer_tokens(e.answer)) for e in examples]
    assert [r["n_answer_tokens"] for r in rows] == n_tokens
    assert summary["nll"] == pytest.approx(sum(r["nll"] * n for r, n in zip(rows, n_tokens)) / sum(n_tokens))
    assert summary["n_questions"] == 5
    rows, summary = evaluate_qa(
        parts.model,
        parts.tokenizer,
        examples,
        parts.collator,
        "cpu",
        ["em3"],
        batch_size=5,
        decoding=Decoding(max_new_tokens=4),
        progress=False,
    )
    for row in rows:
        f1s = [float(f) for f in row["f1s"].split()]
        assert len(row["predictions"].split(" || ")) == len(f1s) == 3
        assert row["max_f1"] == pytest.approx(max(f1s), abs=1e-4) and row["f1"] == pytest.approx(f1s[0], abs=1e-4)
        assert row["f1_at_k"] == pytest.approx(sum(f1s) / 3, abs=1e-4)
    assert summary["top_k"] == 3 and summary["em_at_k"] >= summary["em"]


# ---------------------------------------------------------------------------------------------
# Stream training


class PositionWeights(torch.nn.Module):
    """Weights that differ per position, so a test can tell they were used."""

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1], dtype=torch.float64)
        return (1.0 + 0.1 * positions).expand_as(input_ids) * attention_mask


def manual_weighted_loss(model, ids, weights, max_text_len):
    logits = model(input_ids=ids).logits
    token_nll = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")
    return (token_nll * weights[0, 1:]).sum() / (max_text_len - 1)


def without_dropout(model):
    """A copy in which train mode is deterministic, so two copies can be compared step by step."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def test_weighted_train_is_accumulated_sgd_on_the_weighted_loss(world_parts):
    parts = world_parts
    texts = [e.text for e in parts.test[:4:2]]
    reference = without_dropout(parts.model)
    total = 0
    for text in texts:
        ids = torch.tensor(parts.collator.text_tokens([text]))
        weights = PositionWeights()(ids, torch.ones_like(ids))
        total = total + manual_weighted_loss(reference, ids, weights, parts.collator.max_text_len) / 2
    grads = torch.autograd.grad(total, list(reference.parameters()))
    expected = [p.detach() - 0.5 * g for p, g in zip(reference.parameters(), grads)]

    model = without_dropout(parts.model)
    settings = AdaptationSettings(optimizer="sgd", lr=0.5, batch_size=1, grad_acc_steps=2, grad_clip_thresh=1e9)
    stats = weighted_train(model, PositionWeights(), texts, parts.collator, "cpu", settings, progress=False)
    assert stats["n_steps"] == 1 and stats["n_batches"] == 2
    for new, want in zip(model.parameters(), expected):
        assert torch.allclose(new, want, atol=1e-10)
    # clipping: one document, a tiny threshold, so the SGD step has exactly lr x threshold norm
    model = without_dropout(parts.model)
    weighted_train(
        model,
        PositionWeights(),
        texts[:1],
        parts.collator,
        "cpu",
        AdaptationSettings(optimizer="sgd", lr=0.5, grad_clip_thresh=1e-3),
        progress=False,
    )
    step = torch.cat([(new - old).flatten() for new, old in zip(model.parameters(), parts.model.parameters())])
    assert step.norm().item() == pytest.approx(0.5 * 1e-3, rel=1e-5)


def test_uniform_weights_reproduce_the_plain_lm_loss(world_parts):
    parts = world_parts
    ids, mask = parts.collator.encode_texts([e.text for e in parts.test[:3]])
    uniform = W.build_weight_model(OmegaConf.load(REPO / "conf/model/uniform.yaml"), parts.tokenizer)
    with torch.no_grad():
        logits = parts.model(input_ids=ids, attention_mask=mask).logits
        labels = ids.masked_fill(mask == 0, -100)
        plain = parts.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    weighted = util.weighted_lm_loss(logits, ids, mask, uniform(ids, mask).double(), parts.collator.max_text_len)
    n_targets = mask[:, 1:].sum()
    assert (weighted * 3 * (parts.collator.max_text_len - 1) / n_targets).item() == pytest.approx(
        plain.item(), rel=1e-6
    )


def test_light_tune_restores_the_best_validation(world_parts):
    parts = world_parts
    model = copy.deepcopy(parts.model)
    train = load_split(parts.dataset, "qa_train")
    val = load_split(parts.dataset, "qa_val")[:6]
    settings = LightTuneSettings(
        lr=0.05, batch_size=4, val_steps=1, patience=2, stopping_metric="nll", max_epochs=3, decoding=GREEDY4
    )
    history = light_tune(model, parts.tokenizer, train, val, parts.collator, "cpu", settings, progress=False)
    nlls = [h["nll"] for h in history]
    best = min(range(len(nlls)), key=nlls.__getitem__)
    assert history[0]["step"] == 0 and [h["step"] for h in history] == list(range(len(history)))
    n_batches = 3 * -(-len(train) // 4)
    # stopped by the reference rule (the best of the last 2 worse than the best before), or out of data
    assert min(nlls[:-2]) < min(nlls[-2:]) or history[-1]["step"] == n_batches
    assert all(min(nlls[: i - 2]) >= min(nlls[i - 2 : i]) for i in range(3, len(nlls)))  # no earlier stop
    _, after = evaluate_qa(model, parts.tokenizer, val, parts.collator, "cpu", ["ppl"], progress=False)
    assert after["nll"] == pytest.approx(nlls[best], rel=1e-9)


# ---------------------------------------------------------------------------------------------
# run.py task=eval


def test_uniform_adaptation_lowers_answer_nll(world, tmp_path):
    cfg = compose_config(
        world,
        [
            "model=uniform",
            "lr=1e-3",
            "eval=[em,ppl]",
            "eval_init=true",
            "downsample_to=4",
            "unrelated_qa_eval=true",
            "unrelated_questions=4",
        ],
    )
    summary = evaluation.evaluate(cfg, tmp_path)
    assert set(summary) == SUMMARY_KEYS
    assert summary["nll"] < summary["init"]["nll"]
    assert summary["method"] == "uniform" and summary["split"] == "test" and summary["n_questions"] > 0
    assert set(summary["unrelated"]) == {"em", "f1", "em_at_k", "f1_at_k", "nll"}
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    results = pd.read_csv(tmp_path / "results.csv", keep_default_na=False)
    assert len(results) == summary["n_questions"] + 4
    assert list(results["answer"].iloc[-4:]) == ["EM", "mean F1", "max F1", "mean NLL (over answer tokens)"]
    assert float(results["nll"].iloc[-1]) == pytest.approx(summary["nll"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["adaptation"]["n_steps"] == summary["n_documents"] == 4
    assert set(metrics["unrelated_init"]) == {"em", "f1", "em_at_k", "f1_at_k", "nll"}


def test_camels_and_tfidf_runs(world, world_parts, tmp_path):
    body = f"model.pretrained_model={world.base_model}"
    weight_model = W.build_weight_model(compose_config(world, ["model=CaMeLS", body]).model, world_parts.tokenizer)
    weight_model.save(tmp_path / "wm")
    cfg = compose_config(
        world,
        [
            "model=CaMeLS",
            f"weight_model_path={tmp_path / 'wm'}",
            "eval=[ppl]",
            "downsample_to=2",
            "qa_lt_final=true",
            "lt_val_steps=1",
            "lt_patience=1",
            "lt_val_questions=4",
            "lt_stopping_metric=nll",
            "lt_epochs=1",
        ],
    )
    summary = evaluation.evaluate(cfg, tmp_path / "camels")
    assert summary["method"] == "CaMeLS+qa_tune" and summary["n_documents"] == 2 and summary["em"] is None
    cfg = compose_config(world, ["model=TFIDF", "eval=[ppl]", "downsample_to=3", "eval_every_k=2"])
    summary = evaluation.evaluate(cfg, tmp_path / "tfidf")
    assert summary["method"] == "TFIDF" and summary["nll"] > 0
    curve = json.loads((tmp_path / "tfidf" / "metrics.json").read_text())["curve"]
    assert [point["n_documents"] for point in curve] == [2]


def test_camels_of_another_tokenizer_runs(world, world_parts, tmp_path):
    """A saved CaMeLS whose body has its own tokenizer, unlike the world's base: the evaluation runs,
    the weight model reading the documents through its tokens (its positions do not bound the base's)."""
    from test_weight_model import byte_level_tokenizer

    other = byte_level_tokenizer(["nothing in common with the world's text"] * 3, vocab_size=280)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(other), n_positions=8, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        tmp_path / "body"
    )
    other.save_pretrained(tmp_path / "body")
    body = f"model.pretrained_model={tmp_path / 'body'}"
    weight_model = W.build_weight_model(compose_config(world, ["model=CaMeLS", body]).model, world_parts.tokenizer)
    assert weight_model.base_tokenizer is world_parts.tokenizer
    weight_model.save(tmp_path / "wm")
    cfg = compose_config(
        world, ["model=CaMeLS", f"weight_model_path={tmp_path / 'wm'}", "eval=[ppl]", "downsample_to=2"]
    )
    summary = evaluation.evaluate(cfg, tmp_path / "camels")
    assert summary["method"] == "CaMeLS" and summary["n_documents"] == 2 and summary["nll"] > 0


def test_floor_and_ceiling_runs(world, tmp_path):
    """model=none answers with the base model as it is (its score equals the before-adaptation
    score); model=oracle adapts on the answer tokens of the evaluated stream."""
    common = ["eval=[em,ppl]", "eval_init=true", "downsample_to=3", "lr=1e-3"]
    floor = evaluation.evaluate(compose_config(world, ["model=none", *common]), tmp_path / "none")
    assert floor["method"] == "none" and floor["nll"] == floor["init"]["nll"] and floor["em"] == floor["init"]["em"]
    assert floor["adapts"] is False
    assert json.loads((tmp_path / "none" / "metrics.json").read_text())["adaptation"]["n_steps"] == 0
    ceiling = evaluation.evaluate(compose_config(world, ["model=oracle", *common]), tmp_path / "oracle")
    assert ceiling["method"] == "oracle" and ceiling["adapts"] is True
    assert ceiling["init"]["nll"] == floor["init"]["nll"]
    assert ceiling["nll"] < ceiling["init"]["nll"]
    assert json.loads((tmp_path / "oracle" / "metrics.json").read_text())["adaptation"]["n_steps"] == 3


def bad_input_cases(world, tmp_path, tokenizer):
    other_body = tmp_path / "other_body"
    from test_weight_model import byte_level_tokenizer

    other = byte_level_tokenizer(["nothing in common with the world's text"] * 3, vocab_size=280)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(other), n_positions=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        other_body
    )
    other.save_pretrained(other_body)
    W.build_weight_model(
        compose_config(world, ["model=CaMeLS", f"model.pretrained_model={other_body}"]).model, other
    ).save(tmp_path / "other_wm")
    # without its own tokenizer a weight model of another vocabulary cannot read the world's base
    shutil.rmtree(tmp_path / "other_wm" / "tokenizer")
    for saved in other_body.iterdir():
        if "token" in saved.name or saved.name in ("vocab.json", "merges.txt"):
            saved.unlink()
    small = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2))
    torch.save(small.state_dict(), tmp_path / "other_arch.pt")
    return {
        "weight_model_path": (["model=CaMeLS"], "needs weight_model_path"),
        "vocabulary": (["model=CaMeLS", f"weight_model_path={tmp_path / 'other_wm'}"], "another vocabulary"),
        "architecture": ([f"base_model_state_dict={tmp_path / 'other_arch.pt'}"], "does not fit"),
        "test_path": ([f"test_path={tmp_path / 'missing.csv'}"], "does not exist"),
        "eval_mode": (["eval=[em,bleu]"], "eval mode 'bleu' is unknown"),
        "lr": (["lr=-1e-3"], "lr=-0.001 is invalid; it must be a positive number"),
        "downsample_to": (["downsample_to=0"], "downsample_to=0 is invalid"),
        **({} if importlib.util.find_spec("wandb") else {"wandb": (["wandb=true"], "pip install wandb")}),
    }


def test_bad_inputs_fail_with_one_line_before_training(world, world_parts, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(adaptation, "weighted_train", no_training)
    for name, (overrides, message) in bad_input_cases(world, tmp_path, world_parts.tokenizer).items():
        with pytest.raises(errors.UsageError) as caught:
            evaluation.evaluate(compose_config(world, overrides), tmp_path / name)
        assert message in str(caught.value) and "\n" not in str(caught.value), name
        assert not (tmp_path / name / "summary.json").exists()


@pytest.mark.slow
def test_cli_sweep_makes_one_folder_per_job_and_bad_input_exits_2(world, tmp_path):
    common = [*world_overrides(world), "device=cpu", "progress=false", "eval=[ppl]", "downsample_to=2"]
    result = run_script("run.py", "-m", "task=eval", "model=uniform", "lr=1e-4,1e-3", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = sorted((tmp_path / "outputs").rglob("summary.json"))
    assert len(summaries) == 2
    assert sorted(json.loads(p.read_text())["lr"] for p in summaries) == [1e-4, 1e-3]
    for path in summaries:
        assert (path.parent / "results.csv").is_file()
        assert (path.parent / ".hydra" / "config.yaml").is_file() and (path.parent / "config.yaml").is_file()
        assert set(json.loads(path.read_text())) == SUMMARY_KEYS
    # one folder per setting, named from it: outputs/eval/<dataset>/<method-stream-lr-ds-seed>/<base model>
    assert sorted(p.relative_to(tmp_path).parts[:4] for p in summaries) == [
        ("outputs", "eval", "tiny_world", f"uniform-test-lr{lr}-ds2-seed42") for lr in ("0.0001", "0.001")
    ]
    assert {p.parent.name for p in summaries} == {
        f"{world.base_model.parent.name}_base_model-{hashlib.sha256(str(world.base_model).encode()).hexdigest()[:6]}"
    }
    # the single run of a setting the sweep ran finds it finished in the same folder
    stamp = summaries[1].stat().st_mtime_ns
    again = run_script("run.py", "task=eval", "model=uniform", "lr=1e-3", *common, cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout + again.stderr
    assert sorted((tmp_path / "outputs").rglob("summary.json")) == summaries
    assert summaries[1].stat().st_mtime_ns == stamp

    result = run_script("run.py", "task=eval", "model=CaMeLS", *common, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "weight_model_path" in lines[0]

    # a value of the wrong type for its schema (schemas.py) is one line from Hydra's composition
    result = run_script("run.py", "task=eval", "model=uniform", "lr=1e-3x", *common, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: lr=1e-3x is invalid; it must be a number"]

    # a config Hydra cannot compose is one line too, naming the choices
    result = run_script("run.py", "task=eval", "model=camels", *common, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "Could not find 'model/camels'" in lines[0]
        and "CaMeLS, TFIDF, excess_loss, none, oracle, ssm, surprisal, uniform" in lines[0]
    )
