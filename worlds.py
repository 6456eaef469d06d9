"""The demo on several tiny worlds, and each method's comparison with the best baseline pooled over them.

    python worlds.py run world_seeds=[0,3,7] [out_dir=outputs/worlds] [demo_overrides=[parallel_jobs=2]] \
        [dry_run=true]
    python worlds.py pool OUT1 OUT2 ... [--out DIR] [--bootstrap N]

`run` (options in conf/worlds.yaml) runs demo.py once per world seed (the tiny-world recipe's `seed`,
through the demo's tiny_world_overrides) into OUT/world<seed>, one world after another; the demo
resumes finished steps, so a rerun reuses the worlds already done. Then it pools them into
OUT/pooled. dry_run=true lists the demo commands and the world folders, and runs nothing.

`pool` reads demo output folders (each with its val/ and test/ runs): in each world every method at
its lr chosen on validation, against the best baseline on the same test streams (report.py's paired
comparison, with the demo's baselines and selection metric), then per method one row per world and
the pooled row: the mean of the per-world differences with a hierarchical bootstrap interval
(paired_stats.pooled_compare) and their spread; and per world each method's test score and share of
weight on answer tokens (the demo's report/answer_mass.csv). Writes pooled.md, pooled.csv, worlds.csv.
"""

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import tiny_world
from paired_stats import compare, paired_comparisons, pooled_compare
from plumbing import checks, errors, files, schemas
from plumbing.environment import REPO_ROOT
from plumbing.errors import UsageError

POOLED = "pooled"


# ---------------------------------------------------------------------------------------------
# Running the demo on every world


def compose(config_name, overrides, what):
    """conf/<config_name>.yaml with `overrides`, composed by Hydra and checked by its schema."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(REPO_ROOT / "conf"), version_base=None):
            cfg = hydra_compose(config_name, overrides=list(overrides))
    except HydraException as err:
        raise UsageError(f"{what}: {errors.composition_error(err)}") from None
    schemas.check_values(cfg)
    return cfg


def demo_config(demo_overrides):
    """conf/demo.yaml with `demo_overrides` (key=value), checked as demo.py checks its options."""
    return compose("demo", demo_overrides, f"demo_overrides={list(demo_overrides)}")


def plan(cfg):
    """[(seed, demo output folder, demo.py arguments, tiny-world folder)] per world seed of `cfg`
    (conf/worlds.yaml's keys); each world's recipe is the demo's tiny_world_overrides plus its seed."""
    seeds = list(cfg.world_seeds)
    if (
        not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) < len(seeds)
    ):
        raise UsageError(f"world_seeds={seeds} is invalid; give distinct integers, e.g. world_seeds=[0,3,7]")
    demo = demo_config(cfg.demo_overrides)
    passed = [o for o in cfg.demo_overrides if o.split("=", 1)[0].strip() not in ("out_dir", "tiny_world_overrides")]
    out = Path(cfg.out_dir).resolve()
    worlds = []
    for seed in seeds:
        recipe = [o for o in demo.tiny_world_overrides if o.split("=", 1)[0].strip() != "seed"] + [f"seed={seed}"]
        folder = out / f"world{seed}"
        arguments = ["demo.py", f"out_dir={folder}", f"tiny_world_overrides={json.dumps(recipe)}", *passed]
        worlds.append((seed, folder, arguments, tiny_world.output_root(tiny_world.load_recipe(recipe))))
    return worlds


def run_worlds(cfg):
    """Every world's demo (skipped steps where finished), then the pooled report; dry_run lists the plan."""
    worlds = plan(cfg)
    pooled_dir = Path(cfg.out_dir).resolve() / POOLED
    for seed, folder, arguments, world_root in worlds:
        print(
            f"[worlds] world seed {seed} (tiny world {world_root}): {shlex.join([sys.executable, *arguments])}",
            flush=True,
        )
        if cfg.dry_run:
            continue
        if subprocess.run([sys.executable, *arguments], cwd=REPO_ROOT, check=False).returncode != 0:
            raise UsageError(
                f"the demo of world seed {seed} failed (its output in {folder}); fix the error above "
                "and rerun, which resumes from the unfinished steps"
            )
    folders = [str(folder) for _, folder, _, _ in worlds]
    command = [sys.executable, "worlds.py", "pool", *folders, "--out", str(pooled_dir)]
    print(f"[worlds] pooled report: {shlex.join(command)}", flush=True)
    if not cfg.dry_run:
        pool_main([*folders, "--out", str(pooled_dir), "--bootstrap", str(cfg.bootstrap_resamples)])


# ---------------------------------------------------------------------------------------------
# Pooling


def world_comparisons(out_dir, metric, baselines):
    """One demo output folder's ({method: (entry, differences)}, profile): each method at its lr chosen
    on OUT/val against the best of `baselines` on OUT/test (paired_stats.paired_comparisons), and
    world_profile's rows."""
    import report

    out_dir = Path(out_dir)
    for phase in ("val", "test"):
        if not (out_dir / phase).is_dir():
            raise UsageError(f"{out_dir} has no {phase}/ folder; give demo output folders (demo.py's out_dir)")
    runs = report.load_runs([out_dir / "test"])
    best = report.best_lrs(report.aggregate_runs(runs, metric), metric, report.aggregate([out_dir / "val"], metric))
    if best["setting_key"].nunique() > 1:
        raise UsageError(f"{out_dir / 'test'} holds runs of several settings; pool folders of one demo each")
    # one setting: every run shares it
    compared = paired_comparisons(
        best, runs, baselines, ["setting_key"], lambda a, b: True, "em" if metric == "em" else "f1"
    )
    comparisons = {entry["method"]: (entry, differences) for entry, differences in compared}
    if comparisons:
        # the best baseline against itself: zero on the same streams and questions, so that a baseline
        # best in some worlds and not in others still has a row pooled over all of them
        entry, differences = next(iter(comparisons.values()))
        itself = dict(entry, method=entry["baseline"], lr=entry["baseline_lr"])
        comparisons[itself["method"]] = (itself, [np.zeros_like(d) for d in differences])
    return comparisons, world_profile(out_dir, best)


def world_profile(out_dir, best):
    """Per method of one demo output folder: its mean test F1 and EM at the lr chosen on validation
    and, where the demo wrote report/answer_mass.csv, its share of weight on the answer tokens of the
    first test stream beside those tokens' share (what sets a world apart: its floor `none`, its
    ceiling `oracle`, where each weighting puts its weight)."""
    profile = best[["method", "lr", "f1_fraction_mean", "em_fraction_mean"]].rename(
        columns={"f1_fraction_mean": "test_f1_fraction", "em_fraction_mean": "test_em_fraction"}
    )
    mass_file = Path(out_dir) / "report" / "answer_mass.csv"
    if mass_file.is_file():
        mass = read_answer_mass(mass_file)
        profile = profile.merge(mass, how="left", left_on="method", right_on="weighting").drop(columns="weighting")
    else:
        profile = profile.assign(answer_weight_share=float("nan"), answer_token_share=float("nan"))
    return profile.assign(world=Path(out_dir).resolve().name)


def read_answer_mass(path):
    columns = {"weighting", "answer_weight_share", "answer_token_share"}
    try:
        mass = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} cannot be read ({err}); rerun that world's demo, which rewrites its report") from None
    if not columns <= set(mass.columns):
        raise UsageError(
            f"{path} lacks the columns {', '.join(sorted(columns - set(mass.columns)))}; rerun that world's demo, "
            "which rewrites its report"
        )
    return mass[sorted(columns)]


def pooled_table(out_dirs, metric, baselines, n_resamples=10_000, seed=0):
    """(comparisons, profiles). comparisons, per method compared in every world (a world's best
    baseline counts as 0 there): one row per world (its difference to its best baseline, the interval
    over streams and questions) and a `pooled` row (pooled_compare); columns world, method, baseline,
    difference, ci_low, ci_high, n_streams, n_questions, n_worlds, world_sd, world_min, world_max (the
    last four on pooled rows). profiles: world_profile's rows of every world."""
    names = [Path(d).resolve().name for d in out_dirs]
    if len(set(names)) < len(names):
        raise UsageError(f"the world folders {', '.join(map(str, out_dirs))} share names; give folders named apart")
    read = [world_comparisons(d, metric, baselines) for d in out_dirs]
    per_world = [comparisons for comparisons, _ in read]
    profiles = pd.concat([profile for _, profile in read], ignore_index=True)
    methods = [m for m in dict.fromkeys(profiles["method"]) if all(m in world for world in per_world)]
    if not methods:
        raise UsageError("no method is compared with a baseline in every world; pool worlds of the same demo")
    rows = []
    for method in methods:
        for name, world in zip(names, per_world):
            entry, differences = world[method]
            result = compare(differences, n_resamples, seed)
            rows.append(
                dict(
                    world=name,
                    method=method,
                    baseline=entry["baseline"],
                    difference=result["difference"],
                    ci_low=result["ci_streams_low"],
                    ci_high=result["ci_streams_high"],
                    n_streams=result["n_streams"],
                    n_questions=result["n_questions"],
                )
            )
        pooled = pooled_compare([world[method][1] for world in per_world], n_resamples, seed)
        baselines_used = sorted({world[method][0]["baseline"] for world in per_world})
        rows.append(dict(world=POOLED, method=method, baseline="/".join(baselines_used), **pooled))
    return pd.DataFrame(rows), profiles


def render_pooled(table, metric):
    label = "EM" if metric == "em" else "F1"
    points = lambda value: f"{100 * value:+.1f}"  # noqa: E731
    lines = [
        f"# Each method against the best baseline, per world and pooled over {table['n_worlds'].max():.0f} worlds",
        "",
        f"Difference of test {label} (points) to the world's best baseline on the same streams; 95% "
        "intervals by a paired bootstrap over the streams and their questions (per world) and over the "
        "worlds, their streams and their questions (pooled). Spread: sd, min and max of the per-world "
        "differences.",
        "",
        f"| Method | World | Baseline | {label} − baseline | 95% CI | Streams | Questions | Spread over worlds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        spread = ""
        if row["world"] == POOLED:
            sd = "–" if pd.isna(row["world_sd"]) else f"{100 * row['world_sd']:.1f}"
            spread = f"sd {sd}, min {points(row['world_min'])}, max {points(row['world_max'])}"
        lines.append(
            f"| {row['method']} | {row['world']} | {row['baseline']} | {points(row['difference'])} | "
            f"[{points(row['ci_low'])}, {points(row['ci_high'])}] | {row['n_streams']:.0f} | "
            f"{row['n_questions']:.0f} | {spread} |"
        )
    return "\n".join(lines) + "\n"


def render_profiles(profiles, metric):
    """Methods by worlds: each method's test score at its validation-chosen lr and its share of
    weight on answer tokens."""
    label = "EM" if metric == "em" else "F1"
    column = "test_em_fraction" if metric == "em" else "test_f1_fraction"
    names = list(dict.fromkeys(profiles["world"]))
    indexed = profiles.set_index(["method", "world"])
    tokens = profiles.groupby("world", sort=False)["answer_token_share"].max()
    lines = [
        f"## Each world: test {label} at the lr chosen on validation · share of weight on answer tokens",
        "",
        "Answer-token shares are over the first test stream's documents (report/answer_mass.csv); "
        "`–` where the world's demo wrote none.",
        "",
        "| Method | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    share = lambda value: "–" if pd.isna(value) else f"{100 * value:.1f}%"  # noqa: E731
    lines.append("| (answer tokens) | " + " | ".join(share(tokens.get(name)) for name in names) + " |")
    for method in dict.fromkeys(profiles["method"]):
        cells = []
        for name in names:
            if (method, name) not in indexed.index:
                cells.append("")
                continue
            row = indexed.loc[(method, name)]
            cells.append(f"{100 * row[column]:.1f} · {share(row['answer_weight_share'])}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message}; see python worlds.py pool --help")


def pool_main(argv):
    """`python worlds.py pool OUT1 OUT2 ...`: the pooled table of demo output folders."""
    demo = demo_config([])
    parser = _Parser(prog="worlds.py pool", description="Pool demo outputs of several worlds.")
    parser.add_argument("folders", nargs="+", metavar="OUT", help="demo output folders, one per world")
    parser.add_argument("--out", help="output folder (default: pooled/ beside the first OUT)")
    parser.add_argument(
        "--metric",
        default=demo.selection_metric,
        choices=("f1", "em", "nll"),
        help="picks each method's lr on validation (the comparison scores em for em, else f1)",
    )
    parser.add_argument(
        "--baselines",
        default=",".join(demo.baselines),
        help="comma-separated baselines; each world compares with the best of them",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=demo.bootstrap_resamples, metavar="N", help="bootstrap resamples"
    )
    args = parser.parse_args(argv)
    if args.bootstrap < 100:
        raise UsageError(f"--bootstrap {args.bootstrap} is too few resamples for a 95% interval; use at least 100")
    table, profiles = pooled_table(
        args.folders, args.metric, [b for b in args.baselines.split(",") if b], args.bootstrap
    )
    out = Path(args.out) if args.out else Path(args.folders[0]).resolve().parent / POOLED
    markdown = render_pooled(table, args.metric) + "\n" + render_profiles(profiles, args.metric)
    files.atomic_write_text(table.to_csv(index=False), out / "pooled.csv")
    files.atomic_write_text(profiles.to_csv(index=False), out / "worlds.csv")
    files.atomic_write_text(markdown, out / "pooled.md")
    print(markdown)
    print(f"wrote {out}/pooled.md, pooled.csv, worlds.csv")


def main(argv):
    if argv[:1] == ["pool"]:
        return pool_main(argv[1:])
    if argv[:1] != ["run"]:
        raise UsageError(
            "give a command: python worlds.py run world_seeds=[...] ..., or python worlds.py pool OUT1 OUT2 ..."
        )
    return run_worlds(compose("worlds", checks.quoted_list_overrides(argv[1:]), "worlds.py run"))


if __name__ == "__main__":
    errors.run_cli(lambda: main(sys.argv[1:]))
