"""The tiny world: deterministic generation, honest splits and spans, incremental atomic builds,
and CSVs that the dataset registry reads."""

import json
import re
import shutil

import pandas as pd
import pytest
import torch

import tiny_world
from exp_datasets import load_split, load_web_text, make_stream
from plumbing.environment import REPO_ROOT
from plumbing.errors import UsageError
from plumbing.loading import load_causal_lm, load_tokenizer
from tiny_world import world
from tiny_world.sanity_report import token_weights

STREAM_FILES = ("train.csv", "val.csv", "test.csv", "qa_train.csv", "qa_val.csv", "pretrain_qa.csv")


def read(data_dir, name):
    return pd.read_csv(data_dir / name, keep_default_na=False)


def small_recipe(extra=()):
    from conftest import SMALL_WORLD

    return tiny_world.load_recipe(SMALL_WORLD + list(extra))


def test_same_seed_gives_same_bytes_and_another_seed_differs(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / name).mkdir()
        world.write_tables(world.make_world(small_recipe([f"seed={seed}"])), tmp_path / name)
    for file in STREAM_FILES + ("web_text.csv", "pretrain_docs.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    assert (tmp_path / "a" / "test.csv").read_bytes() != (tmp_path / "c" / "test.csv").read_bytes()


def test_entities_never_cross_splits(tiny_world_small):
    data = tiny_world_small.data_dir
    pretrain = read(data, "pretrain_docs.csv")
    groups = {
        "pretrain_qa": set(read(data, "pretrain_qa.csv")["entity"]),
        "qa_train": set(read(data, "qa_train.csv")["entity"]),
        "qa_val": set(read(data, "qa_val.csv")["entity"]),
        **{split: set(read(data, f"{split}.csv")["entity"]) for split in ("train", "val", "test")},
    }
    names = list(groups)
    for i, first in enumerate(names):
        assert groups[first], first
        for second in names[i + 1 :]:
            assert not groups[first] & groups[second], (first, second)
    # pretraining reads the documents of the pretrain_qa, qa_train and qa_val entities; only the
    # first set's QA pairs are pretrained on (the model builder reads pretrain_qa.csv), so QA
    # pre-tuning's pairs are new to the base model
    assert set(pretrain["entity"]) == groups["pretrain_qa"] | groups["qa_train"] | groups["qa_val"]
    for name in ("pretrain_qa", "qa_train", "qa_val"):
        assert set(pretrain.loc[pretrain["qa_file"] == name, "entity"]) == groups[name]
    cfg = small_recipe()
    assert len(groups["pretrain_qa"]) == cfg.n_pretrain_entities
    assert len(groups["qa_train"]) + len(groups["qa_val"]) == cfg.n_qa_entities
    # no stream entity is ever named in what the base model read
    read_text = " ".join(pretrain["text"])
    for split in ("train", "val", "test"):
        for entity in groups[split]:
            assert not re.search(rf"\b{re.escape(entity)}\b", read_text), (split, entity)


def test_answer_spans_point_at_the_answer(tiny_world_small):
    cfg = small_recipe()
    for file in STREAM_FILES:
        frame = read(tiny_world_small.data_dir, file)
        assert len(frame)
        for row in frame.itertuples():
            assert row.text[row.answer_start : row.answer_end] == row.answers
            assert row.answers not in row.question
        per_doc = frame.groupby("doc_id").apply(
            lambda g: len(set(zip(g.answer_start, g.answer_end))), include_groups=False
        )
        assert per_doc.between(*cfg.facts_per_doc).all(), file
        assert frame.groupby("doc_id")["text"].nunique().eq(1).all()


def test_documents_have_the_configured_length_and_web_text_has_no_facts(tiny_world_small):
    cfg = small_recipe()
    test = read(tiny_world_small.data_dir, "test.csv").drop_duplicates("doc_id")
    words = test["text"].str.split().str.len()
    # the last filler sentence may pass the target by one sentence
    assert words.min() >= cfg.doc_words[0] and words.max() <= cfg.doc_words[1] + 25
    web = read(tiny_world_small.data_dir, "web_text.csv")["raw_text"]
    entities = set(read(tiny_world_small.data_dir, "test.csv")["entity"])
    assert len(web) == cfg.n_web_texts
    assert not any(e in text for e in entities for text in web)


def test_registry_reads_every_split(tiny_world_small):
    cfg = tiny_world_small.dataset_cfg
    for split in ("qa_train", "qa_val", "train", "val", "test"):
        examples = load_split(cfg, split)
        frame = read(tiny_world_small.data_dir, f"{split}.csv")
        assert len(examples) == len(frame)
        assert [e.answer for e in examples] == frame["answers"].astype(str).tolist()
        assert all(e.text[int(e.extra["answer_start"]) : int(e.extra["answer_end"])] == e.answer for e in examples)
    stream = make_stream(load_split(cfg, "test"), downsample_to=-1, seed=0)
    assert len(stream) == read(tiny_world_small.data_dir, "test.csv")["doc_id"].nunique()
    assert len(load_web_text(cfg.web_text_csv)) == small_recipe().n_web_texts


def test_base_model_loads_like_a_hub_model(tiny_world_small):
    tokenizer = load_tokenizer(tiny_world_small.base_model)
    model = load_causal_lm(tiny_world_small.base_model)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.vocab_size == len(tokenizer)
    text = read(tiny_world_small.data_dir, "test.csv")["text"][0]
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    with torch.no_grad():
        logits = model(torch.tensor([ids[:64]])).logits
    assert logits.shape == (1, min(64, len(ids)), len(tokenizer)) and torch.isfinite(logits).all()


def test_oracle_weights_cover_the_answer_with_uniform_mass(tiny_world_small):
    tokenizer = load_tokenizer(tiny_world_small.base_model)
    row = read(tiny_world_small.data_dir, "test.csv").iloc[0]
    weights = token_weights("oracle", tokenizer, row.text, [(row.answer_start, row.answer_end)], 10_000)
    ids = tokenizer(row.text)["input_ids"]
    assert len(weights) == len(ids)
    assert weights[1:].sum().item() == pytest.approx(len(ids) - 1)
    chosen = tokenizer.decode([i for i, w in zip(ids, weights) if w > 0])
    assert chosen.strip() == row.answers


def test_build_is_skipped_when_unchanged_and_redone_per_stage(tiny_world_small, tmp_path, capsys):
    root = tmp_path / "world"
    shutil.copytree(tiny_world_small.root, root)
    recipe = small_recipe([f"out_dir={root}"])
    before = (root / "recipe.json").read_bytes()
    assert tiny_world.build(recipe) == root
    assert (root / "recipe.json").read_bytes() == before
    assert "written" not in capsys.readouterr().out

    model_bytes = (root / "base_model" / "model.safetensors").read_bytes()
    changed = small_recipe([f"out_dir={root}", "report.one_step.lrs=[0.5]", "report.n_qa=4", "report.stream.n_docs=0"])
    tiny_world.build(changed)
    record = json.loads((root / "recipe.json").read_text())
    assert record["timings_s"]["data"] == record["timings_s"]["model"] == "reused"
    assert record["timings_s"]["report"] != "reused"
    assert (root / "base_model" / "model.safetensors").read_bytes() == model_bytes
    assert [r["lr"] for r in json.loads((root / "report.json").read_text())["one_step"]["rows"]] == [0.5] * 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".world.") and p.is_dir()]

    # a data change invalidates every later stage; the hashes chain
    base, reseeded = tiny_world.stage_hashes(recipe), tiny_world.stage_hashes(small_recipe(["seed=7"]))
    assert all(base[s] != reseeded[s] for s in base)
    model_only = tiny_world.stage_hashes(small_recipe(["pretrain.epochs=3"]))
    assert model_only["data"] == base["data"] and model_only["model"] != base["model"]
    # where it is built does not matter
    assert tiny_world.stage_hashes(small_recipe(["out_dir=/elsewhere", "num_threads=1"])) == base


def test_evaluation_code_changes_refresh_only_the_report(tmp_path, monkeypatch):
    """The report measures with util/subroutines/exp_datasets code: editing it must redo the report
    stage (so report.md never shows numbers of old code) but keep the data and the model."""
    for names in tiny_world.STAGE_SOURCES.values():
        for name in names:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO_ROOT / name, tmp_path / name)
    monkeypatch.setattr(tiny_world, "REPO_ROOT", tmp_path)
    recipe = small_recipe()
    before = tiny_world.stage_hashes(recipe)
    with open(tmp_path / "util.py", "a") as handle:
        handle.write("\n# a comment, and the same code reformatted, rebuild nothing\n")
    assert tiny_world.stage_hashes(recipe) == before
    with open(tmp_path / "util.py", "a") as handle:
        handle.write("CHANGED = 1\n")
    after = tiny_world.stage_hashes(recipe)
    assert (after["data"], after["model"]) == (before["data"], before["model"]) and after["report"] != before["report"]


def test_interrupted_build_leaves_the_previous_build(tiny_world_small, tmp_path, monkeypatch):
    from tiny_world import sanity_report

    root = tmp_path / "world"
    shutil.copytree(tiny_world_small.root, root)
    before = (root / "recipe.json").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sanity_report, "build_report", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_world.build(small_recipe([f"out_dir={root}", "report.n_qa=3"]))
    assert (root / "recipe.json").read_bytes() == before
    assert tiny_world.is_current(root, tiny_world.stage_hashes(small_recipe()))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["world"]


def test_resolving_a_config_never_builds(tmp_path, monkeypatch):
    """${tiny_world:...} only names paths: resolving the whole run config with an empty cache builds nothing."""
    from conftest import compose
    from omegaconf import OmegaConf

    monkeypatch.setenv("CAMELS_CACHE_DIR", str(tmp_path / "env_cache"))
    monkeypatch.setattr(tiny_world, "build", lambda *a, **k: pytest.fail("resolving a config built the tiny world"))
    for overrides in (["task=eval"], ["task=train", "model=CaMeLS"]):
        resolved = OmegaConf.to_container(compose("conf", overrides), resolve=True)
        assert resolved["base_model"] == str(tmp_path / "env_cache" / "tiny_world" / "base_model")
        assert resolved["dataset"]["data_dir"] == str(tmp_path / "env_cache" / "tiny_world" / "data")
    # cache_dir= of the run wins over $CAMELS_CACHE_DIR
    cfg = compose("conf", ["task=train", "model=CaMeLS", f"cache_dir={tmp_path / 'mine'}"])
    assert cfg.base_model == cfg.model.pretrained_model == str(tmp_path / "mine" / "tiny_world" / "base_model")
    assert not (tmp_path / "env_cache").exists() and not (tmp_path / "mine").exists()
    from omegaconf.errors import InterpolationResolutionError

    with pytest.raises(InterpolationResolutionError, match="tiny_world:weights. is unknown"):
        _ = OmegaConf.create({"x": "${tiny_world:weights}"}).x


def test_entry_points_build_the_default_world_only_when_the_config_points_into_it(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    built = []
    monkeypatch.setattr(tiny_world, "is_current", lambda root, hashes: False)
    monkeypatch.setattr(tiny_world, "build", lambda cfg: built.append(tiny_world.output_root(cfg)))
    cache = tmp_path / "cache"
    tiny_world.ensure_built_for(
        OmegaConf.create(
            {"cache_dir": str(cache), "base_model": "gpt2", "dataset": {"data_dir": str(tmp_path / "mine")}}
        )
    )
    assert built == []
    tiny_world.ensure_built_for(OmegaConf.create({"cache_dir": str(cache), "base_model": "${tiny_world:base_model}"}))
    assert built == [cache / "tiny_world"]


def test_every_recipe_has_a_folder_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMELS_CACHE_DIR", str(tmp_path))
    assert tiny_world.output_root(tiny_world.load_recipe()) == tmp_path / "tiny_world"
    # where and how it is built does not change the folder; anything it is made of does
    assert (
        tiny_world.output_root(tiny_world.load_recipe(["num_threads=2", "progress=false"])) == tmp_path / "tiny_world"
    )
    variants = {
        tiny_world.output_root(tiny_world.load_recipe(o)) for o in (["seed=7"], ["seed=8"], ["model.n_layer=2"])
    }
    assert len(variants) == 3 and all(p.parent == tmp_path and p.name.startswith("tiny_world-") for p in variants)
    assert tiny_world.output_root(tiny_world.load_recipe(["seed=7"])) in variants
    assert tiny_world.output_root(tiny_world.load_recipe(["seed=7", f"out_dir={tmp_path / 'x'}"])) == tmp_path / "x"


def test_bad_recipe_fails_before_work(tmp_path):
    with pytest.raises(UsageError, match="qa_val_fraction"):
        tiny_world.build(small_recipe([f"out_dir={tmp_path / 'w'}", "qa_val_fraction=1.0"]))
    with pytest.raises(UsageError, match="doc_words"):
        tiny_world.build(small_recipe([f"out_dir={tmp_path / 'w'}", "doc_words=[90,60]"]))
    with pytest.raises(UsageError, match="n_test_docs=14"):  # 2 + 5 x 3 documents for the report
        tiny_world.build(small_recipe([f"out_dir={tmp_path / 'w'}", "report.stream.n_docs=5"]))
    assert not (tmp_path / "w").exists()


def test_stream_report_averages_streams_each_adapted_from_the_base_model(tiny_world_small):
    from exp_datasets import QACollator, load_split, to_documents
    from tiny_world.sanity_report import stream_adaptation

    tokenizer = load_tokenizer(tiny_world_small.base_model)
    model = load_causal_lm(tiny_world_small.base_model).eval()
    collator = QACollator.from_config(tokenizer, tiny_world_small.dataset_cfg)
    docs = to_documents(load_split(tiny_world_small.dataset_cfg, "test"))
    first, second = docs[:3], docs[3:6]

    def rows(streams):
        return stream_adaptation(
            model, tokenizer, collator, streams, ["oracle"], [3e-2], grad_clip=750.0, progress=False
        )

    alone = [rows([first]), rows([second])]
    both = rows([first, second])
    for index, name in enumerate(("none", "oracle")):
        nll = [alone[0][index]["nll"], alone[1][index]["nll"]]
        assert both[index]["scheme"] == name
        # the second stream starts from the base model again: the same result as when run alone
        assert both[index]["nll"] == pytest.approx(sum(nll) / 2, rel=1e-5)
        assert both[index]["em_per_stream"] == [alone[0][index]["em"], alone[1][index]["em"]]
        assert both[index]["n"] == alone[0][index]["n"] + alone[1][index]["n"]
    assert both[1]["nll"] < both[0]["nll"]  # adapting on answer tokens lowers the answers' NLL
