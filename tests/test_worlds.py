"""worlds.py: the plan of demo commands over world seeds, and the comparison pooled over worlds
against the paired bootstrap computed here from the per-question scores."""

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from test_paired_stats import write_run

import paired_stats
import tiny_world
import worlds
from plumbing.environment import REPO_ROOT
from plumbing.errors import UsageError

# world -> method -> stream seed -> per-question F1 (each method at its only lr, 1e-3)
SCORES = {
    "worldA": {
        "uniform": {1: [0.0, 0.5, 1.0, 0.0], 2: [0.0, 0.0, 0.5, 0.0]},
        "TFIDF": {1: [0.0, 0.0, 0.0, 0.0], 2: [0.0, 0.0, 0.0, 0.5]},
        "CaMeLS": {1: [1.0, 0.5, 1.0, 0.5], 2: [0.5, 0.0, 1.0, 1.0]},
    },
    "worldB": {
        "uniform": {1: [0.0, 0.0, 0.0], 2: [0.5, 0.0, 0.0], 3: [0.0, 0.0, 0.0]},
        "TFIDF": {1: [1.0, 0.0, 0.5], 2: [0.5, 0.5, 0.0], 3: [0.0, 1.0, 0.0]},
        "CaMeLS": {1: [1.0, 0.0, 0.0], 2: [0.5, 0.5, 1.0], 3: [0.0, 1.0, 0.5]},
    },
}


def demo_arguments(arguments):
    """demo.py's configuration from its command-line arguments, parsed as demo.main parses them."""
    assert arguments[0] == "demo.py"
    return OmegaConf.merge(OmegaConf.load(REPO_ROOT / "conf" / "demo.yaml"), OmegaConf.from_dotlist(arguments[1:]))


def test_plan_runs_one_demo_per_world_seed_into_its_own_folder(tmp_path, monkeypatch, capsys):
    recipe = ["n_test_docs=50", "report.stream.lrs=[1.0e-3,3.0e-3]", "seed=9"]
    cfg = OmegaConf.merge(
        OmegaConf.load(REPO_ROOT / "conf" / "worlds.yaml"),
        {
            "out_dir": str(tmp_path / "worlds"),
            "world_seeds": [0, 3],
            "dry_run": True,
            "demo_overrides": [
                "parallel_jobs=1",
                f"tiny_world_overrides=[{','.join(repr(o) for o in recipe)}]",
                "out_dir=elsewhere",
            ],
        },
    )
    planned = worlds.plan(cfg)
    assert [seed for seed, *_ in planned] == [0, 3]
    for seed, folder, arguments, world_root in planned:
        demo = demo_arguments(arguments)
        assert folder == tmp_path / "worlds" / f"world{seed}" and demo.out_dir == str(folder)
        # the world's recipe: the demo's overrides with the world seed in place of theirs
        assert list(demo.tiny_world_overrides) == recipe[:2] + [f"seed={seed}"]
        assert demo.parallel_jobs == 1
        assert world_root == tiny_world.output_root(tiny_world.load_recipe(recipe[:2] + [f"seed={seed}"]))
    assert planned[0][3] != planned[1][3]

    monkeypatch.setattr(worlds.subprocess, "run", lambda *a, **k: pytest.fail("a dry run ran a command"))
    worlds.run_worlds(cfg)
    printed = capsys.readouterr().out
    assert printed.count("demo.py out_dir=") == 2 and "worlds.py pool" in printed
    with pytest.raises(UsageError, match="world_seeds"):
        worlds.plan(OmegaConf.merge(cfg, {"world_seeds": [3, 3]}))


def write_world(root, scores):
    """A demo output folder: val and test runs of every method (validation: the test scores)."""
    for method, streams in scores.items():
        for seed, f1s in streams.items():
            write_run(root / "test" / method, method, 1e-3, seed, f1s)
        write_run(root / "val" / method, method, 1e-3, 0, streams[1])


def hand_differences(world):
    """CaMeLS minus the baseline of highest mean test F1, per stream."""
    scores = SCORES[world]
    baseline = max(("uniform", "TFIDF"), key=lambda m: np.mean([np.mean(f) for f in scores[m].values()]))
    return baseline, [np.subtract(scores["CaMeLS"][s], scores[baseline][s]) for s in sorted(scores[baseline])]


def test_pooled_table_matches_the_bootstrap_of_the_hand_differences(tmp_path):
    for world, scores in SCORES.items():
        write_world(tmp_path / world, scores)
    # worldA's demo wrote its answer shares, worldB's (older code) did not
    (tmp_path / "worldA" / "report").mkdir()
    pd.DataFrame(
        dict(weighting=["uniform", "CaMeLS"], answer_weight_share=[0.05, 0.25], answer_token_share=[0.05, 0.05])
    ).to_csv(tmp_path / "worldA" / "report" / "answer_mass.csv", index=False)
    folders = [str(tmp_path / w) for w in SCORES]
    worlds.pool_main([*folders, "--baselines", "uniform,TFIDF", "--bootstrap", "2000", "--out", str(tmp_path / "out")])
    profiles = pd.read_csv(tmp_path / "out" / "worlds.csv").set_index(["world", "method"])
    for world, scores in SCORES.items():
        for method, streams in scores.items():
            hand_f1 = np.mean([np.mean(f1s) for f1s in streams.values()])
            assert profiles.loc[(world, method), "test_f1_fraction"] == pytest.approx(hand_f1)
    assert profiles.loc[("worldA", "CaMeLS"), "answer_weight_share"] == 0.25
    assert np.isnan(profiles.loc[("worldA", "TFIDF"), "answer_weight_share"])
    assert profiles["answer_weight_share"].loc["worldB"].isna().all()
    table = pd.read_csv(tmp_path / "out" / "pooled.csv")
    camels = table[table["method"] == "CaMeLS"].set_index("world")
    hand = {world: hand_differences(world) for world in SCORES}
    assert [hand[w][0] for w in SCORES] == ["uniform", "TFIDF"]  # each world's own best baseline
    for world, (baseline, differences) in hand.items():
        direct = paired_stats.compare(differences, 2000, seed=0)
        assert camels.loc[world, "baseline"] == baseline
        assert camels.loc[world, "difference"] == pytest.approx(direct["difference"])
        assert (camels.loc[world, "ci_low"], camels.loc[world, "ci_high"]) == pytest.approx(
            (direct["ci_streams_low"], direct["ci_streams_high"])
        )
    per_world = [np.mean([np.mean(d) for d in hand[w][1]]) for w in SCORES]
    pooled = paired_stats.pooled_compare([hand[w][1] for w in SCORES], 2000, seed=0)
    row = camels.loc["pooled"]
    assert row["difference"] == pytest.approx(np.mean(per_world))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((pooled["ci_low"], pooled["ci_high"]))
    assert row["world_sd"] == pytest.approx(np.std(per_world, ddof=1))
    assert (row["world_min"], row["world_max"]) == pytest.approx((min(per_world), max(per_world)))
    assert row["n_worlds"] == 2 and row["n_streams"] == 5 and row["baseline"] == "TFIDF/uniform"
    # a baseline best in one world has difference 0 there, and is pooled with its difference elsewhere
    uniform = table[table["method"] == "uniform"].set_index("world")
    assert uniform.loc["worldA", ["difference", "ci_low", "ci_high"]].tolist() == [0.0, 0.0, 0.0]
    in_b = [np.subtract(SCORES["worldB"]["uniform"][s], SCORES["worldB"]["TFIDF"][s]) for s in (1, 2, 3)]
    assert uniform.loc["worldB", "difference"] == pytest.approx(np.mean([np.mean(d) for d in in_b]))
    assert uniform.loc["pooled", "difference"] == pytest.approx(np.mean([np.mean(d) for d in in_b]) / 2)
    assert list(dict.fromkeys(table["method"])) == ["uniform", "TFIDF", "CaMeLS"]
    text = (tmp_path / "out" / "pooled.md").read_text()
    assert f"| CaMeLS | pooled | TFIDF/uniform | {100 * np.mean(per_world):+.1f} |" in text
    assert "| (answer tokens) | 5.0% | – |" in text and "| CaMeLS | 68.8 · 25.0% | 50.0 · – |" in text

    # one world pools to its own result
    worlds.pool_main(
        [folders[0], "--baselines", "uniform,TFIDF", "--bootstrap", "2000", "--out", str(tmp_path / "one")]
    )
    one = pd.read_csv(tmp_path / "one" / "pooled.csv")
    one = one[one["method"] == "CaMeLS"].set_index("world")
    assert one.loc["pooled", ["difference", "ci_low", "ci_high"]].tolist() == pytest.approx(
        one.loc["worldA", ["difference", "ci_low", "ci_high"]].tolist()
    )


def test_a_folder_that_is_not_a_demo_output_is_refused(tmp_path):
    write_run(tmp_path / "runs" / "test", "uniform", 1e-3, 1, [0.0, 1.0])
    with pytest.raises(UsageError, match="no val/ folder"):
        worlds.pool_main([str(tmp_path / "runs")])
    write_world(tmp_path / "world", SCORES["worldA"])
    (tmp_path / "world" / "report").mkdir()
    (tmp_path / "world" / "report" / "answer_mass.csv").write_text("weighting,share\nuniform,0.1\n")
    with pytest.raises(UsageError, match="answer_mass.csv lacks the columns answer_token_share, answer_weight_share"):
        worlds.pool_main([str(tmp_path / "world")])
    with pytest.raises(UsageError, match="give a command"):
        worlds.main(["pool_all"])
