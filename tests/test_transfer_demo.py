"""The transfer experiment (demo.py with transfer.bases) in miniature on the seconds-sized world: the
proxy's QA tuning and meta-training run once in the proxy demo's folder with the default demo's own
commands, each transfer base is QA-tuned and swept with the proxy's weight models, and one base also
gets a weight model meta-trained with itself."""

import json

import pandas as pd
import pytest
from conftest import compose
from omegaconf import OmegaConf
from test_demo import demo_config

import demo
from plumbing.errors import UsageError


@pytest.mark.slow
def test_transfer_experiment_reuses_the_proxy_and_evaluates_every_base(tiny_world_small, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAMELS_CACHE_DIR", str(tmp_path / "cache"))
    proxy_dir, out = tmp_path / "demo", tmp_path / "transfer"
    cfg = demo_config(
        tiny_world_small,
        out,
        meta_train_seeds=[0],
        test_seeds=[1],
        max_lr_extensions=0,
        heatmap_documents=1,
        transfer={
            "bases": ["llama", "unigram"],
            "proxy_demo_dir": str(proxy_dir),
            "target_meta_train": ["unigram"],
            "target_meta_train_seeds": [0],
        },
    )
    cfg.methods = {name: cfg.methods[name] for name in ("none", "uniform", "CaMeLS")}
    cfg.baselines = ["uniform"]
    assert demo.run_demo(OmegaConf.merge(cfg)) == out.resolve()
    world = next(p for p in (tmp_path / "cache").iterdir() if p.name.startswith("tiny_world-"))
    proxy_checkpoint = str(proxy_dir / "meta_train" / "seed0" / "checkpoints" / "best")

    # the proxy's steps ran in its folder with the commands the default demo runs there (so it skips them)
    proxy_cfg = OmegaConf.merge(cfg, {"out_dir": str(proxy_dir), "transfer": {"bases": []}})
    proxy_cfg.base_model = str(proxy_dir / "qa_tune" / "checkpoints" / cfg.qa_checkpoint)
    _, proxy_cfg.world_overrides = demo.world_overrides(proxy_cfg)
    expected = demo.meta_train_command(proxy_cfg, world, 0, ["torch_threads=1"], proxy_dir)
    assert json.loads((proxy_dir / ".done" / "meta_train_seed0").read_text()) == expected
    assert OmegaConf.load(proxy_dir / "qa_tune" / ".hydra" / "config.yaml").model == str(world / "base_model")

    for name, own_rows in (("llama", []), ("unigram", ["CaMeLS_seed0"])):
        base_out = out / name
        assert OmegaConf.load(base_out / "qa_tune" / ".hydra" / "config.yaml").model == str(
            world / "transfer_bases" / name
        )
        qa_tuned = str(base_out / "qa_tune" / "checkpoints" / cfg.qa_checkpoint)
        best = pd.read_csv(base_out / "report" / "best.csv").set_index("method")
        assert sorted(best.index) == sorted(["none", "uniform", "CaMeLS_proxy_seed0", *own_rows])
        for path in base_out.glob("test/CaMeLS_proxy_seed0/**/config.yaml"):
            run = OmegaConf.load(path)
            assert run.base_model == qa_tuned and run.weight_model_path == proxy_checkpoint
        assert (base_out / "report" / "paired.csv").stat().st_size > 0
        assert (base_out / "meta_train").exists() == bool(own_rows)
    # the reference: meta-trained with the Unigram base, its body the world's base model (another tokenizer)
    target = OmegaConf.load(out / "unigram" / "meta_train" / "seed0" / ".hydra" / "config.yaml")
    assert target.base_model == str(out / "unigram" / "qa_tune" / "checkpoints" / cfg.qa_checkpoint)
    assert target.model.pretrained_model == str(world / "base_model")
    summary = (out / "summary.md").read_text()
    assert "## llama" in summary and "## unigram" in summary and "CaMeLS_proxy_seed0" in summary

    # a rerun finds every step done
    capsys.readouterr()
    demo.run_demo(OmegaConf.merge(cfg))
    ran = capsys.readouterr().out
    assert "recomputing" not in ran and "[demo] qa_tune: done before, skipped" in ran
    assert ran.count("meta_train_seed0: done before, skipped") == 2


def test_experiment_transfer_sets_the_transfer_options():
    cfg = compose("conf", ["experiment=transfer"], config_name="demo")
    assert list(cfg.transfer.bases) == ["llama", "unigram"] and list(cfg.transfer.target_meta_train) == ["unigram"]
    assert cfg.out_dir == "outputs/transfer" and cfg.transfer.proxy_demo_dir == "outputs/demo"
    # every other option is the demo's
    default = compose("conf", [], config_name="demo")
    assert cfg.methods == default.methods and cfg.lrs == default.lrs and cfg.test_seeds == default.test_seeds


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"transfer": {"target_meta_train": ["gpt3"]}}, "transfer.target_meta_train"),
        ({"meta_train_seeds": []}, "meta_train_seeds"),
    ],
)
def test_bad_transfer_options_fail_before_work(tiny_world_small, tmp_path, changes, message):
    cfg = demo_config(
        tiny_world_small, tmp_path / "transfer", transfer={"bases": ["llama"], "proxy_demo_dir": str(tmp_path / "demo")}
    )
    with pytest.raises(UsageError, match=message):
        demo.run_demo(OmegaConf.merge(cfg, changes))
    assert not (tmp_path / "transfer").exists() and not (tmp_path / "demo").exists()
