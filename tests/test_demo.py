"""The demo end to end on the seconds-sized tiny world: every step through the user-facing
commands, each method's lr chosen on validation, the report, the heat-maps, and resuming."""
import json
import os
import subprocess
import sys
from collections import defaultdict

import pandas as pd
import pytest
from omegaconf import OmegaConf

import demo
from util import REPO_ROOT, UsageError

# every test here runs demo.py or its steps as subprocesses
pytestmark = pytest.mark.slow

LRS = [1.0e-3, 3.0e-2]


def demo_config(world, out_dir, **changes):
    data = [f"dataset.data_dir={world.data_dir}"]
    cfg = OmegaConf.merge(OmegaConf.load(REPO_ROOT / "conf" / "demo.yaml"), {
        "out_dir": str(out_dir),
        "tiny_world_overrides": world.overrides,
        "qa_tune_overrides": [*data, f"model={world.base_model}", "device=cpu", "max_steps=4", "val_steps=2",
                              "max_val_questions=8", "max_new_tokens=4"],
        "meta_train_overrides": [*data, f"++dataset.web_text_csv={world.data_dir / 'web_text.csv'}",
                                 f"model.pretrained_model={world.base_model}", "device=cpu", "max_outer_steps=2",
                                 "update_batch_size=2", "reset_base_freq=4", "grad_acc_steps=1", "val_steps=1",
                                 "val_batches=1", "sample_docs=1", "progress=false"],
        "eval_overrides": [*data, "eval=[em,ppl]", "device=cpu", "max_new_tokens=4", "progress=false"],
        "lrs": LRS, "val_downsample_to": 4, "test_downsample_to": 4, "test_seeds": [1, 2], "heatmap_documents": 2,
    })
    return OmegaConf.merge(cfg, changes)


def summaries(folder):
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("summary.json"))]


def test_miniature_demo_runs_end_to_end_and_resumes(tiny_world_small, tmp_path, capsys):
    cfg = demo_config(tiny_world_small, tmp_path / "demo")
    report_dir = demo.run_demo(cfg)
    out = tmp_path / "demo"
    methods = list(cfg.methods)

    # the lr of each method is the best mean validation F1, computed here from the run summaries
    val = defaultdict(list)
    for summary in summaries(out / "val"):
        assert summary["split"] == "val" and summary["n_documents"] == 4
        val[summary["method"], summary["lr"]].append(summary["f1"])
    assert sorted(val) == sorted((m, lr) for m in methods for lr in LRS)
    best = pd.read_csv(report_dir / "best.csv").set_index("method")
    assert sorted(best.index) == sorted(methods)
    for method in methods:
        top = max(sum(v) / len(v) for (m, _), v in val.items() if m == method)
        chosen = best.loc[method, "lr"]
        assert val[method, chosen] == [top]

    # the test stream: each method at its chosen lr, once per seed, and the table's means match
    test = defaultdict(list)
    for summary in summaries(out / "test"):
        assert summary["split"] == "test"
        test[summary["method"], summary["lr"], summary["seed"]] = summary["f1"]
    assert sorted(test) == sorted((m, best.loc[m, "lr"], s) for m in methods for s in (1, 2))
    for method in methods:
        seeds = [test[method, best.loc[method, "lr"], s] for s in (1, 2)]
        assert best.loc[method, "f1_mean"] == pytest.approx(sum(seeds) / 2)
    assert best["nll_mean"].notna().all(), "eval=[em,ppl] puts the answer NLL in the table"

    for name in ("results.md", "results.csv", "best.csv", "best_f1.png"):
        assert (report_dir / name).stat().st_size > 0, name
    for weighting in ("uniform", "ssm", "TFIDF", "CaMeLS"):
        html = (report_dir / f"weights_{weighting}.html").read_text()
        assert html.count("<span") > 10 and (report_dir / f"weights_{weighting}.png").is_file()
    # uniform weights put exactly the answer tokens' share of the weight on them
    shares = {line.split("|")[1].strip(): line.split("|")[2:4] for line in
              (report_dir / "answer_mass.md").read_text().splitlines() if line.startswith("| ") and "%" in line}
    assert sorted(shares) == ["CaMeLS", "TFIDF", "ssm", "uniform"]
    weight_share, token_share = (float(cell.strip().rstrip("%")) for cell in shares["uniform"])
    assert weight_share == token_share > 0
    assert (out / "meta_train" / "checkpoints" / "best" / "model.safetensors").is_file()
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"tiny_world", "qa_tune", "meta_train", "report",
                            *(f"{phase}_{m}" for phase in ("val", "test") for m in methods)}

    # a second run finds every step done and only redraws the report's heat-maps
    capsys.readouterr()
    demo.run_demo(cfg)
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == len(timings)
    assert json.loads((out / "timings.json").read_text()) == timings


def test_failed_step_stops_the_demo_with_one_line_and_is_rerun(tiny_world_small, tmp_path):
    cfg = demo_config(tiny_world_small, tmp_path / "demo")
    cfg.qa_tune_overrides = [*cfg.qa_tune_overrides, "lr=-1"]
    with pytest.raises(UsageError) as caught:
        demo.run_demo(cfg)
    assert "qa_tune_overrides: lr=-1" in str(caught.value) and "is invalid" in str(caught.value) and "\n" not in str(caught.value)
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
    result = subprocess.run([sys.executable, str(REPO_ROOT / "demo.py"), option, f"out_dir={tmp_path / 'demo'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "conf/demo.yaml" in lines[0] and option.split("=")[0] in lines[0]
    assert not (tmp_path / "demo").exists()
