"""report.py on synthetic trees of summary.json files whose aggregates are known in advance."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import report
from plumbing.errors import UsageError

REPO = Path(__file__).resolve().parents[1]

# (method, lr) -> per-seed (em, f1, nll). For uniform the best lr by F1 (1e-4) differs from the
# best by NLL (2.5e-5), so the two metrics are told apart.
TEST_RUNS = {
    ("uniform", 1e-4): [(0.10, 0.30, 2.5), (0.14, 0.34, 2.7), (0.12, 0.29, 2.6)],
    ("uniform", 2.5e-5): [(0.08, 0.20, 2.0), (0.09, 0.22, 2.1), (0.07, 0.21, 1.9)],
    ("CaMeLS", 1e-4): [(0.20, 0.40, 2.2), (0.22, 0.44, 2.4)],
    ("CaMeLS", 2.5e-5): [(0.25, 0.50, 2.3), (0.21, 0.46, 2.2)],
    ("ssm", 2.5e-5): [(0.05, 0.15, 3.0)],
    ("TFIDF", 1e-4): [(0.06, 0.16, 3.1), (0.07, 0.18, 3.2)],
}
SEEDS = [1, 2, 3]


def write_run(folder, method, lr, seed, em, f1, nll, split="test", dataset="tiny_world", **extra):
    """One finished eval run laid out like Hydra's: .hydra/config.yaml, results.csv, summary.json."""
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text(f"lr: {lr}\nseed: {seed}\n")
    (folder / "results.csv").write_text("question,answer,em,f1\nq,a,1,1\n")
    summary = {"method": method, "lr": lr, "seed": seed, "dataset": dataset, "split": split,
               "base_model": "tiny/base", "downsample_to": 150, "optimizer": "adam",
               "n_epochs": 1, "n_documents": 150, "n_questions": 300, "em": em, "f1": f1,
               "max_f1": f1 + 0.1, "nll": nll, "init": None, "unrelated": None,
               "wall_time_s": 1.0, "run_dir": str(folder)}
    summary.update(extra)
    (folder / "summary.json").write_text(json.dumps(summary))


def write_tree(root, runs, **extra):
    """A Hydra multirun tree: root/<method>/<job number>/, one job per (lr, seed)."""
    for (method, lr), per_seed in runs.items():
        for job, (seed, (em, f1, nll)) in enumerate(zip(SEEDS, per_seed)):
            write_run(root / method / f"{lr:g}_{job}", method, lr, seed, em, f1, nll, **extra)
    return root


@pytest.fixture
def test_tree(tmp_path):
    return write_tree(tmp_path / "test_runs", TEST_RUNS)


def row_of(table, method, lr):
    rows = table[(table["method"] == method) & np.isclose(table["lr"], lr)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_aggregate_means_and_sample_std_match_numpy(test_tree):
    table = report.aggregate([test_tree], metric="f1")
    assert len(table) == len(TEST_RUNS)
    for (method, lr), per_seed in TEST_RUNS.items():
        row = row_of(table, method, lr)
        values = np.array(per_seed)
        assert row["n_seeds"] == len(per_seed)
        assert row["seeds"] == ";".join(str(s) for s in SEEDS[: len(per_seed)])
        for index, name in enumerate(["em_fraction", "f1_fraction", "nll"]):
            assert row[f"{name}_mean"] == pytest.approx(values[:, index].mean(), abs=1e-12)
            if len(per_seed) > 1:
                assert row[f"{name}_std"] == pytest.approx(np.std(values[:, index], ddof=1), abs=1e-12)
            else:
                assert math.isnan(row[f"{name}_std"])
    assert math.isnan(row_of(table, "uniform", 1e-4)["init_f1_fraction_mean"])


def test_best_lr_by_f1_and_by_nll(test_tree):
    by_f1 = report.best_lrs(report.aggregate([test_tree], "f1"), "f1").set_index("method")
    by_nll = report.best_lrs(report.aggregate([test_tree], "nll"), "nll").set_index("method")
    assert by_f1.loc["uniform", "lr"] == 1e-4
    assert by_nll.loc["uniform", "lr"] == 2.5e-5
    assert by_f1.loc["CaMeLS", "lr"] == 2.5e-5
    assert by_nll.loc["CaMeLS", "lr"] == 2.5e-5  # 2.25 < 2.3
    assert by_f1.loc["uniform", "f1_fraction_mean"] == pytest.approx(np.mean([0.30, 0.34, 0.29]))
    flagged = report.aggregate([test_tree], "nll").query("best").set_index("method")
    assert flagged.loc["uniform", "lr"] == 2.5e-5


def test_methods_follow_the_paper_order(tmp_path):
    runs = {(m, 1e-4): [(0.1, 0.2, 2.0)] for m in ["zeta", "CaMeLS", "alpha", "TFIDF", "ssm",
                                                    "uniform+qa_tune", "uniform"]}
    table = report.aggregate([write_tree(tmp_path / "runs", runs)])
    assert list(table["method"]) == ["uniform", "uniform+qa_tune", "ssm", "TFIDF", "CaMeLS",
                                     "alpha", "zeta"]


def test_markdown_shows_percent_with_one_decimal_and_bold_best(test_tree, tmp_path):
    table = report.aggregate([test_tree], "f1")
    markdown = report.write_report(table, report.best_lrs(table, "f1"), tmp_path / "out", "f1")
    f1 = np.array([0.30, 0.34, 0.29])
    em = np.array([0.10, 0.14, 0.12])
    expected = (f"| uniform | **0.0001** | {100 * em.mean():.1f} ± {100 * np.std(em, ddof=1):.1f} | "
                f"{100 * f1.mean():.1f} ± {100 * np.std(f1, ddof=1):.1f} |")
    assert expected in markdown
    # one seed: no std
    assert "| ssm | **2.5e-05** | 5.0 | 15.0 | 25.0 | 3.000 | 1 |" in markdown
    assert "| uniform | 2.5e-05 |" in markdown
    assert (tmp_path / "out" / "results.md").read_text() == markdown


def test_the_no_adaptation_floor_shows_no_learning_rate(tmp_path):
    root = tmp_path / "runs"
    write_tree(root, {("uniform", 1e-4): [(0.1, 0.2, 2.0)]})
    write_run(root / "none" / "0", "none", 3e-4, 1, 0.05, 0.1, 2.5, adapts=False)
    table = report.aggregate([root], "f1")
    markdown = report.write_report(table, report.best_lrs(table, "f1"), tmp_path / "out", "f1")
    assert "| none | **–** | 5.0 | 10.0 |" in markdown and "| none | – | 5.0 | 10.0 |" in markdown
    assert "| uniform | **0.0001** |" in markdown  # summaries without `adapts` (older runs) adapt


def test_select_from_picks_on_validation_and_reports_test(test_tree, tmp_path):
    # On validation uniform is best at 2.5e-5 (test would say 1e-4); CaMeLS has no run at its
    # validation lr in the test tree; TFIDF has no validation runs at all.
    val_runs = {
        ("uniform", 1e-4): [(0.0, 0.10, 2.0)], ("uniform", 2.5e-5): [(0.0, 0.30, 2.0)],
        ("CaMeLS", 6.25e-6): [(0.0, 0.90, 2.0)], ("CaMeLS", 1e-4): [(0.0, 0.20, 2.0)],
        ("ssm", 2.5e-5): [(0.0, 0.10, 2.0)],
    }
    val_tree = write_tree(tmp_path / "val_runs", val_runs, split="val", downsample_to=50)
    out = tmp_path / "report"
    report.main([str(test_tree), "--select-from", str(val_tree), "--out", str(out)])

    best = pd.read_csv(out / "best.csv").set_index("method")
    uniform_test = np.array(TEST_RUNS[("uniform", 2.5e-5)])
    assert best.loc["uniform", "lr"] == 2.5e-5
    assert best.loc["uniform", "f1_fraction_mean"] == pytest.approx(uniform_test[:, 1].mean())
    assert best.loc["uniform", "selection_value"] == pytest.approx(0.30)
    assert best.loc["uniform", "selected_on"] == "validation"
    assert best.loc["CaMeLS", "lr"] == 6.25e-6
    assert math.isnan(best.loc["CaMeLS", "f1_fraction_mean"])
    assert "no runs at the lr chosen on validation" in best.loc["CaMeLS", "note"]
    assert math.isnan(best.loc["TFIDF", "lr"])
    assert "no validation runs" in best.loc["TFIDF", "note"]

    results = pd.read_csv(out / "results.csv")
    flagged = results[results["best"]]
    assert sorted(zip(flagged["method"], flagged["lr"])) == [("ssm", 2.5e-5), ("uniform", 2.5e-5)]
    markdown = (out / "results.md").read_text()
    assert "on the validation runs" in markdown
    assert "| uniform | **2.5e-05** |" in markdown and "| uniform | 0.0001 |" in markdown


def test_outputs_parse_back_and_png_is_written(test_tree, tmp_path):
    out = tmp_path / "out"
    report.main([str(test_tree), "--out", str(out)])
    png = (out / "best_f1.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    results = pd.read_csv(out / "results.csv")
    assert len(results) == len(TEST_RUNS)
    for (method, lr), per_seed in TEST_RUNS.items():
        row = row_of(results, method, lr)
        f1 = np.array(per_seed)[:, 1]
        assert row["f1_fraction_mean"] == pytest.approx(f1.mean(), abs=1e-12)
        assert row["max_f1_fraction_mean"] == pytest.approx(f1.mean() + 0.1, abs=1e-12)
        assert row["n_seeds"] == len(per_seed)
        assert row["dataset"] == "tiny_world" and row["downsample_to"] == 150


def test_default_out_is_beside_the_runs(test_tree, capsys):
    report.main([str(test_tree)])
    assert (test_tree / "report" / "results.csv").is_file()
    assert "# Online adaptation results" in capsys.readouterr().out
    # the report folder holds no summary.json, so a second pass sees the same runs
    assert len(report.aggregate([test_tree])) == len(TEST_RUNS)


def test_mixed_datasets_are_separate_settings(tmp_path):
    write_tree(tmp_path / "runs" / "a", {("uniform", 1e-4): [(0.1, 0.2, 2.0)]}, dataset="squad")
    write_tree(tmp_path / "runs" / "b", {("uniform", 1e-4): [(0.3, 0.4, 2.0)]}, dataset="tiny_world")
    table = report.aggregate([tmp_path / "runs"])
    assert sorted(zip(table["dataset"], table["f1_fraction_mean"])) == [("squad", 0.2), ("tiny_world", 0.4)]
    assert (table["n_seeds"] == 1).all()
    markdown = report.render_markdown(table, report.best_lrs(table), "f1")
    assert markdown.count("## dataset=") == 2


def test_same_seed_twice_is_refused(tmp_path):
    write_run(tmp_path / "runs" / "first", "uniform", 1e-4, 1, 0.1, 0.2, 2.0)
    write_run(tmp_path / "runs" / "again", "uniform", 1e-4, 1, 0.1, 0.2, 2.0)
    with pytest.raises(UsageError, match="seed=1"):
        report.aggregate([tmp_path / "runs"])
    # the same folder reached through two PATHs counts once
    assert len(report.load_runs([tmp_path / "runs" / "first", tmp_path / "runs" / "first"])) == 1


def test_nll_metric_without_nll_is_a_usage_error(tmp_path):
    write_run(tmp_path / "runs" / "0", "uniform", 1e-4, 1, 0.1, 0.2, None)
    with pytest.raises(UsageError, match="no nll"):
        report.aggregate([tmp_path / "runs"], metric="nll")


def test_out_cannot_be_a_run_folder(test_tree):
    run_folder = next(test_tree.rglob("summary.json")).parent
    with pytest.raises(UsageError, match="run folder"):
        report.main([str(test_tree), "--out", str(run_folder)])


@pytest.mark.slow
def test_empty_tree_exits_2_with_one_line(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UsageError, match="no summary.json"):
        report.aggregate([tmp_path / "empty"])
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, str(REPO / "report.py"), str(tmp_path / "empty")],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: no summary.json")
    assert not (tmp_path / "empty" / "report").exists()


def test_select_from_with_two_validation_settings_is_refused(test_tree, tmp_path):
    val_root = tmp_path / "val_runs"
    write_tree(val_root / "small", {("uniform", 1e-4): [(0.1, 0.2, 2.0)]}, split="val", downsample_to=50)
    write_tree(val_root / "large", {("uniform", 1e-4): [(0.1, 0.2, 2.0)]}, split="val", downsample_to=500)
    with pytest.raises(UsageError, match="narrow --select-from"):
        report.main([str(test_tree), "--select-from", str(val_root), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_diverged_runs_are_left_out_of_the_table(tmp_path, capsys):
    write_run(tmp_path / "runs" / "0", "uniform", 1e-4, 1, 0.1, 0.2, 2.0, diverged=False)
    write_run(tmp_path / "runs" / "1", "uniform", 1e6, 1, 0, 0, 0, diverged=True)
    summary = json.loads((tmp_path / "runs" / "1" / "summary.json").read_text())
    (tmp_path / "runs" / "1" / "summary.json").write_text(json.dumps(dict(summary, em=None, f1=None, max_f1=None,
                                                                            nll=None)))
    runs = report.load_runs([tmp_path / "runs"])
    assert [run["lr"] for run in runs] == [1e-4]
    assert "leaving out 1 diverged run" in capsys.readouterr().err
    with pytest.raises(UsageError, match="diverged"):
        report.load_runs([tmp_path / "runs" / "1"])
