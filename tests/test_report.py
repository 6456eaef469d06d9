"""report.py on synthetic trees of summary.json files whose aggregates are known in advance."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import OFFLINE_ENV, run_script

import report
from plumbing.errors import UsageError

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
    summary = {
        "method": method,
        "lr": lr,
        "seed": seed,
        "dataset": dataset,
        "split": split,
        "base_model": "tiny/base",
        "downsample_to": 150,
        "optimizer": "adam",
        "n_epochs": 1,
        "n_documents": 150,
        "n_questions": 300,
        "em": em,
        "f1": f1,
        "max_f1": f1 + 0.1,
        "nll": nll,
        "init": None,
        "unrelated": None,
        "wall_time_s": 1.0,
        "run_dir": str(folder),
    }
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
    runs = {
        (m, 1e-4): [(0.1, 0.2, 2.0)] for m in ["zeta", "CaMeLS", "alpha", "TFIDF", "ssm", "uniform+qa_tune", "uniform"]
    }
    table = report.aggregate([write_tree(tmp_path / "runs", runs)])
    assert list(table["method"]) == ["uniform", "uniform+qa_tune", "ssm", "TFIDF", "CaMeLS", "alpha", "zeta"]


def test_markdown_shows_percent_with_one_decimal_and_bold_best(test_tree, tmp_path):
    table = report.aggregate([test_tree], "f1")
    markdown = report.write_report(table, report.best_lrs(table, "f1"), tmp_path / "out", "f1")
    f1 = np.array([0.30, 0.34, 0.29])
    em = np.array([0.10, 0.14, 0.12])
    expected = (
        f"| uniform | **0.0001** | {100 * em.mean():.1f} ± {100 * np.std(em, ddof=1):.1f} | "
        f"{100 * f1.mean():.1f} ± {100 * np.std(f1, ddof=1):.1f} |"
    )
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
        ("uniform", 1e-4): [(0.0, 0.10, 2.0)],
        ("uniform", 2.5e-5): [(0.0, 0.30, 2.0)],
        ("CaMeLS", 6.25e-6): [(0.0, 0.90, 2.0)],
        ("CaMeLS", 1e-4): [(0.0, 0.20, 2.0)],
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
    result = run_script("report.py", str(tmp_path / "empty"), env=dict(OFFLINE_ENV, MPLBACKEND="Agg"), timeout=120)
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
    (tmp_path / "runs" / "1" / "summary.json").write_text(
        json.dumps(dict(summary, em=None, f1=None, max_f1=None, nll=None))
    )
    runs = report.load_runs([tmp_path / "runs"])
    assert [run["lr"] for run in runs] == [1e-4]
    assert "leaving out 1 diverged run" in capsys.readouterr().err
    with pytest.raises(UsageError, match="diverged"):
        report.load_runs([tmp_path / "runs" / "1"])


# ---------------------------------------------------------------------------------------------
# Runs that record their options (run_options.json), as run.py task=eval writes them


def recorded_run(folder, method, lr, seed, f1, em=0.1, overrides=None, **options):
    """A finished run with its run_options.json (and, with `overrides`, Hydra's .hydra/overrides.yaml)."""
    write_run(folder, method, lr, seed, em, f1, 2.0)
    recorded = {
        "task_name": "eval",
        "dataset.name": "tiny_world",
        "dataset.data_dir": "/data",
        "split": "test",
        "base_model": "tiny/base",
        "downsample_to": 150,
        "optimizer": "adam",
        "n_epochs": 1,
        "max_new_tokens": 16,
        "decoding": "beam",
        "model.name": method,
        "qa_lt_final": False,
        "method_label": None,
        "weight_model_path": None,
        "lr": lr,
        "seed": seed,
        "device": "cpu",
        "progress": True,
        "torch_threads": None,
    }
    recorded.update(options)
    (folder / "run_options.json").write_text(json.dumps(recorded))
    if overrides is not None:
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_settings_are_the_recorded_options_and_titles_name_what_differs(tmp_path):
    root = tmp_path / "runs"
    # differing only in seed and in options that change no number (device, progress): one setting, averaged
    recorded_run(root / "a", "uniform", 1e-4, 1, 0.2)
    recorded_run(root / "b", "uniform", 1e-4, 2, 0.4, device="cuda", progress=False)
    # differing only in max_new_tokens (same seed): another setting, not a second seed
    recorded_run(root / "c", "uniform", 1e-4, 1, 0.9, max_new_tokens=4)
    table = report.aggregate([root])
    assert len(table) == 2
    by_tokens = {json.loads(row["setting_key"])["max_new_tokens"]: row for _, row in table.iterrows()}
    assert by_tokens[16]["n_seeds"] == 2 and by_tokens[16]["f1_fraction_mean"] == pytest.approx(0.3)
    assert by_tokens[4]["n_seeds"] == 1 and by_tokens[4]["f1_fraction_mean"] == pytest.approx(0.9)
    markdown = report.render_markdown(table, report.best_lrs(table), "f1")
    titles = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert len(titles) == 2
    assert any(t.endswith("max_new_tokens=16") for t in titles) and any(t.endswith("max_new_tokens=4") for t in titles)
    assert all("device" not in t and "seed" not in t for t in titles)


def test_one_method_name_over_two_weight_models_is_refused(tmp_path):
    recorded_run(tmp_path / "runs" / "a", "CaMeLS", 1e-4, 1, 0.2, weight_model_path="/w/one")
    recorded_run(tmp_path / "runs" / "b", "CaMeLS", 1e-4, 2, 0.4, weight_model_path="/w/two")
    with pytest.raises(UsageError, match="weight_model_path.*method_label"):
        report.aggregate([tmp_path / "runs"])


def test_a_summary_in_percent_is_refused(tmp_path):
    write_run(tmp_path / "runs" / "0", "uniform", 1e-4, 1, 12.0, 35.0, 2.0)
    with pytest.raises(UsageError, match="not a fraction"):
        report.aggregate([tmp_path / "runs"])


def write_multirun(root, lrs, seeds="1"):
    """The multirun.yaml Hydra writes at a sweep's root, with the sweep's overrides."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(
        f"hydra:\n  overrides:\n    task:\n    - task=eval\n    - lr={lrs}\n    - seed={seeds}\n"
    )


def test_an_incomplete_sweep_is_named_before_its_best_lr(tmp_path, capsys):
    root = tmp_path / "sweep"
    write_multirun(root, "1e-5,1e-4,1e-3,1e-2")
    recorded_run(root / "0", "uniform", 1e-5, 1, 0.2)
    recorded_run(root / "1", "uniform", 1e-4, 1, 0.5)
    recorded_run(root / "2", "uniform", 1e-3, 1, 0.3)
    # job 2 was killed; job 3 never started: its folder holds run_options.json but no summary.json
    (root / "2" / "summary.json").unlink()
    report.main([str(root), "--out", str(tmp_path / "out"), "--baselines", ""])
    printed = capsys.readouterr().out
    warning = [line for line in printed.splitlines() if line.startswith("warning: uniform's lr grid is incomplete")]
    assert len(warning) == 1 and "missing lr 0.001, 0.01" in warning[0]
    assert printed.index(warning[0]) < printed.index("# Online adaptation results")
    best = pd.read_csv(tmp_path / "out" / "best.csv").set_index("method")
    assert best.loc["uniform", "lr"] == 1e-4
    assert "best of an incomplete grid" in best.loc["uniform", "note"]
    assert best.loc["uniform", "missing_lrs"] == "0.001;0.01"
    assert "best of an incomplete grid" in (tmp_path / "out" / "results.md").read_text()


def test_a_complete_sweep_has_no_warning(tmp_path, capsys):
    root = tmp_path / "sweep"
    write_multirun(root, "1e-5,1e-4,1e-3", seeds="1,2")
    for job, (lr, seed) in enumerate([(lr, seed) for lr in (1e-5, 1e-4, 1e-3) for seed in (1, 2)]):
        recorded_run(root / str(job), "uniform", lr, seed, 0.5 if lr == 1e-4 else 0.2)
    report.main([str(root), "--out", str(tmp_path / "out"), "--baselines", ""])
    assert "warning" not in capsys.readouterr().out
    best = pd.read_csv(tmp_path / "out" / "best.csv", keep_default_na=False).set_index("method")
    assert best.loc["uniform", "note"] == "" and best.loc["uniform", "edge"] == ""


def test_a_best_lr_at_the_grid_edge_prints_the_command_that_extends_it(tmp_path, capsys):
    root = tmp_path / "sweep"
    for job, (lr, seed, f1) in enumerate([(1e-5, 1, 0.1), (1e-4, 1, 0.2), (1e-3, 1, 0.4), (1e-3, 2, 0.5)]):
        recorded_run(
            root / str(job),
            "uniform",
            lr,
            seed,
            f1,
            overrides=["task=eval", "model=uniform", f"lr={lr}", f"seed={seed}", "eval=[em,ppl]"],
        )
    report.main([str(root), "--out", str(tmp_path / "out"), "--baselines", ""])
    printed = capsys.readouterr().out
    assert (
        "warning: uniform's best lr 0.001 is the largest of its grid (1e-05, 0.0001, 0.001); the optimum may "
        "lie beyond it, run: python run.py -m task=eval model=uniform 'eval=[em,ppl]' lr=0.01 seed=1,2"
    ) in printed
    best = pd.read_csv(tmp_path / "out" / "best.csv").set_index("method")
    assert best.loc["uniform", "edge"] == "largest" and best.loc["uniform", "next_lr"] == pytest.approx(0.01)
    assert "try lr=0.01" in best.loc["uniform", "note"]
    # the demo's rule: the grid's mean log-ratio, 3 significant digits; inside the grid nothing
    assert report.lr_beyond_edge(3e-3, [3e-4, 1e-3, 3e-3]) == pytest.approx(0.00949)
    assert report.lr_beyond_edge(3e-4, [3e-4, 1e-3, 3e-3]) == pytest.approx(9.49e-5)
    assert report.lr_beyond_edge(1e-3, [3e-4, 1e-3, 3e-3]) is None


def test_a_tie_goes_to_the_smaller_lr(tmp_path):
    # mean(0.1, 0.2) is 0.15000000000000002 in floating point: the same as 0.15
    runs = {("uniform", 1e-4): [(0.0, 0.1, 2.0), (0.0, 0.2, 2.0)], ("uniform", 1e-5): [(0.0, 0.15, 2.0)] * 2}
    table = report.aggregate([write_tree(tmp_path / "runs", runs)], "f1")
    assert row_of(table, "uniform", 1e-4)["f1_fraction_mean"] > row_of(table, "uniform", 1e-5)["f1_fraction_mean"]
    assert report.best_lrs(table, "f1").set_index("method").loc["uniform", "lr"] == 1e-5


def test_units_percent_in_tables_fractions_named_in_csv_and_the_em_rule_beside_em(test_tree, tmp_path):
    out = tmp_path / "out"
    report.main([str(test_tree), "--out", str(out), "--metric", "em", "--bootstrap", "200"])
    header = pd.read_csv(out / "results.csv").columns
    assert {"em_fraction_mean", "f1_fraction_mean", "max_f1_fraction_mean", "nll_mean"} <= set(header)
    assert not {"em_mean", "f1_mean", "max_f1_mean"} & set(header)
    assert pd.read_csv(out / "results.csv")["em_fraction_mean"].max() <= 1
    assert {"em_fraction_mean", "f1_fraction_mean"} <= set(pd.read_csv(out / "best.csv").columns)
    markdown = (out / "results.md").read_text()
    tables_with_em = [block for block in markdown.split("\n#") if "| EM" in block or "EM −" in block]
    assert len(tables_with_em) == 3  # full, best-per-method, paired (EM)
    for block in tables_with_em:
        assert "EM counts a prediction whose normalised text starts with the normalised answer" in block
    assert "| Method | LR | EM % | F1 % |" in markdown


def test_headings_say_validation_or_test(tmp_path):
    for split, word, other in (("val", "validation", "test"), ("test", "test", "validation")):
        root = tmp_path / split
        for method, f1s in (("uniform", [0.0, 0.5]), ("CaMeLS", [1.0, 0.5])):
            write_run(root / method, method, 1e-4, 1, 0.0, float(np.mean(f1s)), 2.0, split=split)
            pd.DataFrame({"question": ["q1", "q2"], "answer": ["a", "a"], "em": [0.0, 0.0], "f1": f1s}).to_csv(
                root / method / "results.csv", index=False
            )
        report.main([str(root), "--out", str(tmp_path / f"out_{split}"), "--bootstrap", "200"])
        markdown = (tmp_path / f"out_{split}" / "results.md").read_text()
        assert f"Difference of {word} F1" in markdown and f"highest {word} F1" in markdown
        assert f"{other} F1" not in markdown
        assert f"### Best lr per method ({word})" in markdown


def test_the_chart_title_is_short():
    import report_tables

    row = {
        "dataset": "tiny_world",
        "split": "val",
        "base_model": "/very/long/absolute/path/qa_tune/best",
        "downsample_to": 100,
        "setting": "max_new_tokens=4",
    }
    assert report_tables.short_title(row) == "tiny_world, validation, base best, 100 docs, max_new_tokens=4"


def test_summaries_give_em_and_f1_in_percent_beside_the_fractions():
    import evaluation

    shown = evaluation.with_percents({"em": 0.25, "f1": 0.5, "max_f1": None})
    assert shown["em_percent"] == 25.0 and shown["f1_percent"] == 50.0 and shown["max_f1_percent"] is None
    assert shown["em"] == 0.25  # the fractions stay


def test_older_summaries_without_recorded_options_fall_back_to_their_own_fields(tmp_path):
    write_run(tmp_path / "runs" / "beam", "uniform", 1e-4, 1, 0.1, 0.2, 2.0, decoding="beam")
    write_run(tmp_path / "runs" / "greedy", "uniform", 1e-4, 1, 0.1, 0.4, 2.0, decoding="greedy")
    table = report.aggregate([tmp_path / "runs"])
    assert sorted(table["setting"]) == ["decoding=beam", "decoding=greedy"] and (table["n_seeds"] == 1).all()
    markdown = report.render_markdown(table, report.best_lrs(table), "f1")
    assert markdown.count("n_epochs=1, decoding=greedy\n") == 1
