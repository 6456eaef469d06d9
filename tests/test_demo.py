"""The demo end to end on the seconds-sized tiny world: every step through the user-facing
commands, each method's lr chosen on validation, the report, the heat-maps, and resuming."""

import json
from collections import defaultdict

import pandas as pd
import pytest
import torch
from conftest import compose, run_script
from omegaconf import OmegaConf

import demo
from plumbing.errors import UsageError

# every test here runs demo.py or its steps as subprocesses
pytestmark = pytest.mark.slow

LRS = [1.0e-3, 3.0e-2]


def demo_config(world, out_dir, **changes):
    """The miniature demo on a variant recipe (the seconds-sized world), built by the demo itself
    into the cache folder: no option below points at the world's files, the demo must."""
    recipe = [o for o in world.overrides if not o.startswith("out_dir=")]
    cfg = compose("conf", config_name="demo")
    OmegaConf.set_struct(cfg, False)  # as demo.main leaves it for run_demo
    cfg = OmegaConf.merge(
        cfg,
        {
            "out_dir": str(out_dir),
            "tiny_world_overrides": recipe,
            "qa_tune_overrides": [
                "device=cpu",
                "max_steps=4",
                "val_steps=2",
                "max_val_questions=8",
                "max_new_tokens=4",
            ],
            "meta_train_overrides": [
                "device=cpu",
                "max_outer_steps=2",
                "update_batch_size=2",
                "reset_base_freq=4",
                "grad_acc_steps=1",
                "val_steps=1",
                "val_batches=1",
                "sample_docs=1",
                "progress=false",
            ],
            "eval_overrides": ["eval=[em,ppl]", "device=cpu", "max_new_tokens=4", "progress=false"],
            "lrs": LRS,
            "val_downsample_to": 4,
            "test_downsample_to": 4,
            "test_seeds": [1, 2],
            "heatmap_documents": 2,
            "bootstrap_resamples": 200,
            "max_lr_extensions": 1,
            "baselines": ["uniform", "TFIDF"],
        },
    )
    # fewer methods than the demo's, every kind among them: floor, baselines, meta-trained, ceiling
    cfg.methods = {name: cfg.methods[name] for name in ("none", "uniform", "TFIDF", "CaMeLS", "oracle")}
    return OmegaConf.merge(cfg, changes)


def summaries(folder):
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("summary.json"))]


def expected_lrs(val_f1, method, unswept):
    """The lrs the sweep must have run, recomputed from the validation F1s: the grid, then while
    the best (ties: the smaller lr) is at an edge of what ran, the next log-spaced value beyond it."""
    if method in unswept:
        return [LRS[0]]
    ran, ratio = list(LRS), LRS[1] / LRS[0]
    for _ in range(1):
        best = min(ran, key=lambda lr: (-val_f1[method, lr], lr))
        if best not in (min(ran), max(ran)):
            break
        beyond = float(f"{best / ratio if best == min(ran) else best * ratio:.3g}")
        assert (method, beyond) in val_f1, (method, beyond)
        ran.append(beyond)
    return sorted(ran)


def test_miniature_demo_runs_end_to_end_and_resumes(tiny_world_small, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAMELS_CACHE_DIR", str(tmp_path / "cache"))
    cfg = demo_config(tiny_world_small, tmp_path / "demo")
    report_dir = demo.run_demo(cfg)
    out = tmp_path / "demo"
    methods = [m for m in cfg.methods if m != "CaMeLS"] + ["CaMeLS_seed0", "CaMeLS_seed1"]

    # the variant world has a folder of its own, every step read its files, the default was never built
    worlds = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    assert len(worlds) == 1 and worlds[0].startswith("tiny_world-"), worlds
    data_dir = str(tmp_path / "cache" / worlds[0] / "data")
    step_configs = [
        out / "qa_tune" / ".hydra" / "config.yaml",
        *(out / "meta_train").glob("seed*/.hydra/config.yaml"),
        *out.glob("val/**/config.yaml"),
        *out.glob("test/**/config.yaml"),
    ]
    assert len(step_configs) > 2 * len(methods)
    for path in step_configs:
        assert OmegaConf.load(path).dataset.data_dir == data_dir, path
    qa_model = OmegaConf.load(out / "qa_tune" / ".hydra" / "config.yaml").model
    assert qa_model == str(tmp_path / "cache" / worlds[0] / "base_model")

    # each method's lrs: the grid and the values beyond its edges; its lr is the best validation F1
    val = defaultdict(list)
    for summary in summaries(out / "val"):
        assert summary["split"] == "val" and summary["n_documents"] == 4
        val[summary["method"], summary["lr"]].append(summary["f1"])
    val_f1 = {key: sum(v) / len(v) for key, v in val.items()}
    best = pd.read_csv(report_dir / "best.csv").set_index("method")
    assert sorted(best.index) == sorted(methods)
    for method in methods:
        ran = sorted(lr for m, lr in val if m == method)
        assert ran == expected_lrs(val_f1, method, cfg.unswept_methods), method
        top = max(val_f1[method, lr] for lr in ran)
        assert val_f1[method, best.loc[method, "lr"]] == top

    # the test stream: each method at its chosen lr, once per seed, and the table's means match
    test = defaultdict(list)
    for summary in summaries(out / "test"):
        assert summary["split"] == "test"
        test[summary["method"], summary["lr"], summary["seed"]] = summary["f1"]
    assert sorted(test) == sorted((m, best.loc[m, "lr"], s) for m in methods for s in (1, 2))
    for method in methods:
        seeds = [test[method, best.loc[method, "lr"], s] for s in (1, 2)]
        assert best.loc[method, "f1_fraction_mean"] == pytest.approx(sum(seeds) / 2)
    assert best["nll_mean"].notna().all(), "eval=[em,ppl] puts the answer NLL in the table"
    assert best.loc["none", "f1_fraction_mean"] == pytest.approx(
        test["none", best.loc["none", "lr"], 1] / 2 + test["none", best.loc["none", "lr"], 2] / 2
    )

    for name in ("results.md", "results.csv", "best.csv", "best_f1.png", "paired.csv", "environment.json"):
        assert (report_dir / name).stat().st_size > 0, name
    paired = pd.read_csv(report_dir / "paired.csv").set_index("method")
    assert set(paired.index) == set(methods) - {paired["baseline"].iloc[0]}
    assert paired["baseline"].iloc[0] in cfg.baselines and (paired["n_streams"] == 2).all()
    environment = json.loads((report_dir / "environment.json").read_text())
    assert environment["torch"] == torch.__version__ and environment["torch_threads_per_step"] == 1
    closing = (report_dir / "summary.md").read_text()
    camels = paired.loc["CaMeLS_seed0"]
    assert f"CaMeLS_seed0 − {camels['baseline']} (the best baseline): {100 * camels['difference']:+.1f}" in closing
    for weighting in ("uniform", "TFIDF", "CaMeLS_seed0", "CaMeLS_seed1", "oracle"):
        html = (report_dir / f"weights_{weighting}.html").read_text()
        assert html.count("<span") > 10 and (report_dir / f"weights_{weighting}.png").is_file()
    # uniform weights put exactly the answer tokens' share of the weight on them, the oracle all of it
    shares = {
        line.split("|")[1].strip(): line.split("|")[2:4]
        for line in (report_dir / "answer_mass.md").read_text().splitlines()
        if line.startswith("| ") and "%" in line
    }
    assert sorted(shares) == sorted(["CaMeLS_seed0", "CaMeLS_seed1", "TFIDF", "uniform", "oracle"])
    weight_share, token_share = (float(cell.strip().rstrip("%")) for cell in shares["uniform"])
    assert weight_share == token_share > 0
    assert float(shares["oracle"][0].strip().rstrip("%")) == 100.0
    # answer_mass.csv holds the same shares as fractions (worlds.py pool reads it)
    mass = pd.read_csv(report_dir / "answer_mass.csv").set_index("weighting")
    assert sorted(mass.index) == sorted(shares)
    assert mass.loc["uniform", "answer_weight_share"] == pytest.approx(mass.loc["uniform", "answer_token_share"])
    assert mass.loc["oracle", "answer_weight_share"] == pytest.approx(1.0)
    for name, (weight_cell, _) in shares.items():
        assert f"{100 * mass.loc[name, 'answer_weight_share']:.1f}%" == weight_cell.strip()
    for seed in (0, 1):
        assert (out / "meta_train" / f"seed{seed}" / "checkpoints" / "best" / "model.safetensors").is_file()
    timings = json.loads((out / "timings.json").read_text())
    assert {
        "tiny_world",
        "qa_tune",
        "meta_train_seed0",
        "meta_train_seed1",
        "report",
        *(f"{phase}_{m}" for phase in ("val", "test") for m in methods),
    } <= set(timings)

    # a second run finds every step done and only redraws the report's heat-maps
    capsys.readouterr()
    demo.run_demo(cfg)
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == len(timings)
    assert json.loads((out / "timings.json").read_text()) == timings


def test_lr_grid_must_be_log_spaced():
    assert demo.grid_ratio([1e-4, 1e-3, 1e-2]) == pytest.approx(10.0)
    assert demo.grid_ratio([3e-4, 1e-3, 3e-3]) == pytest.approx(10**0.5)
    with pytest.raises(UsageError, match="not log-spaced"):
        demo.grid_ratio([1e-4, 1e-3, 3e-3])
    with pytest.raises(UsageError, match="at least two"):
        demo.grid_ratio([1e-3])


def test_failed_step_stops_the_demo_with_one_line_and_is_rerun(tiny_world_small, tmp_path, monkeypatch):
    monkeypatch.setenv("CAMELS_CACHE_DIR", str(tmp_path / "cache"))
    cfg = demo_config(tiny_world_small, tmp_path / "demo")
    cfg.qa_tune_overrides = [*cfg.qa_tune_overrides, "lr=-1"]
    with pytest.raises(UsageError) as caught:
        demo.run_demo(cfg)
    assert (
        "qa_tune_overrides: lr=-1" in str(caught.value)
        and "is invalid" in str(caught.value)
        and "\n" not in str(caught.value)
    )
    assert not (tmp_path / "demo").exists(), "checked before any step"
    # passes the checks, fails in the step (the data are read only there)
    cfg.qa_tune_overrides = [f"dataset.data_dir={tmp_path / 'missing'}", *cfg.qa_tune_overrides[1:-1]]
    with pytest.raises(UsageError) as caught:
        demo.run_demo(cfg)
    assert "step qa_tune failed" in str(caught.value) and "\n" not in str(caught.value)
    assert (tmp_path / "demo" / ".done" / "tiny_world").exists()
    assert not (tmp_path / "demo" / ".done" / "qa_tune").exists()


@pytest.mark.parametrize("option", ["lr=1e-3", "test_seeds"])
def test_mistyped_option_is_a_one_line_error(tmp_path, option):
    result = run_script("demo.py", option, f"out_dir={tmp_path / 'demo'}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option.split("=")[0] in lines[0], lines
    assert not (tmp_path / "demo").exists()
