"""Transfer bases (tiny_world.transfer_bases): more base models pretrained on a tiny world's data,
one of another architecture with the world's tokenizer, one with a tokenizer of its own."""

import json
import shutil

import pandas as pd
import pytest
import torch
from conftest import compose
from transformers import AutoConfig, AutoModelForCausalLM

from plumbing.errors import UsageError
from plumbing.loading import load_tokenizer
from tiny_world import transfer_bases

# the seconds-sized world's sizes: a base of a few thousand parameters, a small Unigram vocabulary
SMALL_BASES = ["bases.llama.intermediate_size=48", "bases.unigram.vocab_size=300", "device=cpu", "progress=false"]


def config(world_root, recipe_overrides, extra=()):
    cfg = compose("conf", [*SMALL_BASES, *extra], config_name="transfer_bases")
    cfg.world_overrides = [o for o in recipe_overrides if not o.startswith("out_dir=")] + [f"out_dir={world_root}"]
    return cfg


def document_loss(model, tokenizer, texts):
    """Mean next-token cross-entropy over the tokens of `texts`, each read on its own."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"][: model.config.max_position_embeddings]])
            logits = model(input_ids=ids).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return total / count


@pytest.fixture(scope="module")
def built(tiny_world_small, tmp_path_factory):
    """The transfer bases, built on a copy of the seconds-sized world (its folder gets them)."""
    world_root = tmp_path_factory.mktemp("transfer") / "world"
    shutil.copytree(tiny_world_small.root, world_root)
    cfg = config(world_root, tiny_world_small.overrides)
    return cfg, world_root, transfer_bases.build(cfg)


def test_bases_are_pretrained_on_the_worlds_text_with_their_own_architecture_and_tokenizer(built):
    cfg, world_root, folders = built
    assert folders == {name: world_root / "transfer_bases" / name for name in ("llama", "unigram")}
    world_base = world_root / "base_model"
    texts = pd.read_csv(world_root / "data" / "pretrain_docs.csv", keep_default_na=False)["text"].tolist()[:12]

    # llama: the world's tokenizer files byte for byte; unigram: a tokenizer that splits text otherwise
    assert (folders["llama"] / "tokenizer.json").read_bytes() == (world_base / "tokenizer.json").read_bytes()
    world_tokenizer, unigram_tokenizer = load_tokenizer(world_base), load_tokenizer(folders["unigram"])
    assert json.loads((folders["unigram"] / "tokenizer.json").read_text())["model"]["type"] == "Unigram"
    assert world_tokenizer.tokenize(texts[0]) != unigram_tokenizer.tokenize(texts[0])
    assert unigram_tokenizer.decode(unigram_tokenizer(texts[0])["input_ids"]) == texts[0]
    assert "<0xC3>" in unigram_tokenizer.get_vocab(), "byte fallback pieces"

    world_config = AutoConfig.from_pretrained(world_base)
    for name, model_type in (("llama", "llama"), ("unigram", "gpt2")):
        model = AutoModelForCausalLM.from_pretrained(folders[name]).eval()
        tokenizer = load_tokenizer(folders[name])
        assert model.config.model_type == model_type
        assert model.config.vocab_size == len(tokenizer)
        assert model.config.hidden_size == world_config.n_embd
        assert model.config.num_hidden_layers == world_config.n_layer
        # pretraining lowered the loss on the world's pretraining text below a fresh model's (same config)
        torch.manual_seed(0)
        fresh = AutoModelForCausalLM.from_config(model.config).eval()
        trained_loss, fresh_loss = document_loss(model, tokenizer, texts), document_loss(fresh, tokenizer, texts)
        assert trained_loss < fresh_loss - 0.25, (name, trained_loss, fresh_loss)
        log = json.loads((folders[name] / "pretraining.json").read_text())
        assert log["document_loss_after"] < log["document_loss_before"]
    assert AutoConfig.from_pretrained(folders["llama"]).intermediate_size == 48


def test_a_current_base_is_skipped_and_a_changed_recipe_rebuilds_only_it(built, tiny_world_small, capsys):
    cfg, world_root, folders = built
    stamps = {name: (folder / "model.safetensors").stat().st_mtime_ns for name, folder in folders.items()}
    capsys.readouterr()
    transfer_bases.build(cfg)
    assert capsys.readouterr().out.count(": current in") == 2
    assert stamps == {name: (folder / "model.safetensors").stat().st_mtime_ns for name, folder in folders.items()}

    transfer_bases.build(config(world_root, tiny_world_small.overrides, ["bases.unigram.vocab_size=280"]))
    assert (folders["llama"] / "model.safetensors").stat().st_mtime_ns == stamps["llama"]
    assert (folders["unigram"] / "model.safetensors").stat().st_mtime_ns != stamps["unigram"]
    assert json.loads((folders["unigram"] / "recipe.json").read_text())["recipe"]["vocab_size"] == 280


@pytest.mark.parametrize(
    "override, message",
    [
        ("build=[llama,gpt3]", "build names gpt3"),
        ("bases.unigram.vocab_size=null", "needs vocab_size"),
        ("bases.unigram.intermediate_size=64", "gpt2 architecture"),
        ("bases.llama.architecture=rnn", "architecture=rnn is unknown"),
    ],
)
def test_bad_options_fail_before_work(override, message, tmp_path):
    cfg = compose("conf", [override], config_name="transfer_bases")
    cfg.world_overrides = [f"out_dir={tmp_path / 'never'}"]
    with pytest.raises(UsageError, match=message):
        transfer_bases.build(cfg)
    assert not (tmp_path / "never").exists()


def test_a_world_rebuild_keeps_the_bases_and_they_stay_current(built, tiny_world_small, capsys):
    import tiny_world

    cfg, world_root, folders = built
    transfer_bases.build(cfg)  # the bases of cfg's recipe (an earlier test may have changed one)
    stamps = {name: (folder / "model.safetensors").stat().st_mtime_ns for name, folder in folders.items()}
    report_only = config(world_root, [*tiny_world_small.overrides, "report.n_qa=6"])
    tiny_world.build(tiny_world.load_recipe(list(report_only.world_overrides)))  # redoes the report stage only
    assert json.loads((world_root / "recipe.json").read_text())["config"]["report"]["n_qa"] == 6
    capsys.readouterr()
    transfer_bases.build(report_only)
    assert capsys.readouterr().out.count(": current in") == 2
    assert stamps == {name: (folder / "model.safetensors").stat().st_mtime_ns for name, folder in folders.items()}
