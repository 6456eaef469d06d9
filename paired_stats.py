"""Paired comparison of methods evaluated on the same test streams: each method's difference in
mean F1 (or EM) to the best baseline, with 95% confidence intervals by a paired bootstrap.

Two methods run with the same stream seed are asked the same questions in the same order
(run.py's results.csv, one row per question), so their per-question scores pair up. The
difference is the mean over streams of the per-stream difference of mean scores (the difference
of the table's means). Its intervals come from resampling
  - the questions within each stream (streams fixed): the uncertainty of the question sample;
  - the streams, and the questions within each drawn stream: also the stream-to-stream spread.
Both are percentile intervals of `n_resamples` bootstrap replicates drawn with a fixed seed.

Across worlds (several tiny worlds, each with its streams): `pooled_compare` gives the mean over
worlds of the per-world difference, with an interval from a hierarchical bootstrap that resamples
the worlds, the streams within each drawn world and the questions within each drawn stream.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from plumbing.errors import UsageError

SUMMARY_ROW = "<summary>"
CONFIDENCE = 0.95


def question_scores(run_dir, metric: str = "f1"):
    """(questions, answers, scores) of one run's results.csv, summary rows left out."""
    path = Path(run_dir) / "results.csv"
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype={"question": str, "answer": str})
    except OSError as err:
        raise UsageError(f"cannot read {path} ({err}); the paired comparison needs each run's results.csv") from None
    frame = frame[frame["question"] != SUMMARY_ROW]
    if metric not in frame.columns or (frame[metric] == "").any():
        raise UsageError(f"{path} has no per-question {metric}; evaluate with eval=[em,...] to compare methods")
    return frame["question"].tolist(), frame["answer"].tolist(), frame[metric].astype(float).to_numpy()


def paired_differences(runs, reference_runs, metric="f1"):
    """Per stream seed shared by both: per-question score differences (method - reference).
    `runs` / `reference_runs`: {seed: run_dir}. Refuses streams whose questions do not pair up."""
    seeds = sorted(set(runs) & set(reference_runs))
    differences = []
    for seed in seeds:
        questions, answers, scores = question_scores(runs[seed], metric)
        other_questions, other_answers, other_scores = question_scores(reference_runs[seed], metric)
        if questions != other_questions or answers != other_answers:
            raise UsageError(
                f"runs {runs[seed]} and {reference_runs[seed]} have seed {seed} but not the same "
                "questions; compare runs of one stream (same split, downsample_to and seed)"
            )
        differences.append(scores - other_scores)
    return seeds, differences


def bootstrap_replicates(differences, n_resamples: int = 10_000, seed: int = 0, over_streams: bool = True):
    """Bootstrap replicates of the mean over streams of the per-stream mean difference.

    `differences`: one 1-D array of per-question differences per stream. Within each stream the
    questions are drawn with replacement; with `over_streams` the streams are drawn with
    replacement too (each drawn stream with its own question resample)."""
    if not differences or any(len(d) == 0 for d in differences):
        raise ValueError("every stream needs at least one question")
    rng = np.random.default_rng(seed)
    # per stream, n_resamples question resamples -> n_streams x n_resamples means
    stream_means = np.stack(
        [np.asarray(d, dtype=float)[rng.integers(0, len(d), (n_resamples, len(d)))].mean(1) for d in differences]
    )
    if not over_streams:
        return stream_means.mean(0)
    n_streams = len(differences)
    drawn = rng.integers(0, n_streams, (n_resamples, n_streams))
    return stream_means[drawn, np.arange(n_resamples)[:, None]].mean(1)


def interval(replicates, confidence: float = CONFIDENCE) -> tuple:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def compare(differences, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """The difference and its two intervals, as a dict."""
    estimate = float(np.mean([np.mean(d) for d in differences]))
    questions = interval(bootstrap_replicates(differences, n_resamples, seed, over_streams=False))
    streams = interval(bootstrap_replicates(differences, n_resamples, seed, over_streams=True))
    return dict(
        difference=estimate,
        ci_questions_low=questions[0],
        ci_questions_high=questions[1],
        ci_streams_low=streams[0],
        ci_streams_high=streams[1],
        n_streams=len(differences),
        n_questions=int(sum(len(d) for d in differences)),
    )


def paired_table(best, runs, baselines, setting_columns, same_setting, metric="f1", n_resamples=10_000, seed=0):
    """Per setting of `best` (report.best_lrs: each method at its chosen lr) and each method: the
    difference of its test `metric` to the best baseline (of `baselines` present, the one with the
    highest mean test metric: the hardest comparison) with both intervals. `runs`: report.load_runs
    of the test tree; `same_setting(a, b)`: whether two rows share the `setting_columns`. Rows:
    setting columns, method, lr, baseline, and compare()'s fields."""
    return pd.DataFrame(
        [
            dict(entry, **compare(differences, n_resamples, seed))
            for entry, differences in paired_comparisons(best, runs, baselines, setting_columns, same_setting, metric)
        ]
    )


def paired_comparisons(best, runs, baselines, setting_columns, same_setting, metric="f1"):
    """paired_table's comparisons before the bootstrap: (entry, differences) per setting and method,
    entry holding the setting columns, method, lr, baseline, baseline_lr and seeds, differences
    one array of per-question differences (method - best baseline) per shared stream."""
    if metric not in ("f1", "em"):
        raise UsageError(f"the paired comparison scores questions by f1 or em, not {metric}")
    for _, group in best.groupby(setting_columns, dropna=False, sort=False):
        scored = group[group[f"{metric}_fraction_mean"].notna()]
        candidates = scored[scored["method"].isin(baselines)]
        if candidates.empty:
            continue
        reference = candidates.sort_values(f"{metric}_fraction_mean", ascending=False, kind="stable").iloc[0]

        def seeds_of(row):
            return {
                r["seed"]: r["run_dir"]
                for r in runs
                if r["method"] == row["method"]
                and np.isclose(r["lr"], row["lr"], rtol=1e-9, atol=0)
                and same_setting(r, row)
            }

        reference_runs = seeds_of(reference)
        for _, row in scored.iterrows():
            if row["method"] == reference["method"]:
                continue
            stream_seeds, differences = paired_differences(seeds_of(row), reference_runs, metric)
            if not differences:
                continue
            entry = {c: row[c] for c in setting_columns}
            entry.update(
                method=row["method"],
                lr=row["lr"],
                baseline=reference["method"],
                baseline_lr=reference["lr"],
                seeds=";".join(map(str, stream_seeds)),
            )
            yield entry, differences


# ---------------------------------------------------------------------------------------------
# Pooled over worlds


def hierarchical_replicates(worlds, n_resamples: int = 10_000, seed: int = 0):
    """Bootstrap replicates of the mean over worlds of each world's mean over streams of the
    per-stream mean difference. `worlds`: per world, its streams' 1-D arrays of per-question
    differences (bootstrap_replicates' `differences`).

    Each replicate draws the worlds with replacement; each drawn world's streams with replacement;
    each drawn stream's questions with replacement. The draws within a world are those of
    bootstrap_replicates(world, n_resamples, seed, over_streams=True) for a single world, so one
    world gives exactly its over-streams-and-questions replicates. A world drawn twice in one
    replicate takes two different (independent) of its resamples.

    The spread between the world means already holds each world's own stream and question noise,
    which the inner resampling adds once more: the interval errs on the wide side, the more so the
    noisier each world's estimate is beside the spread between worlds."""
    if not worlds or any(not streams for streams in worlds):
        raise ValueError("every world needs at least one stream")
    if any(len(d) == 0 for streams in worlds for d in streams):
        raise ValueError("every stream needs at least one question")
    rng = np.random.default_rng(seed)
    # every stream's question resamples first, then each world's stream draws (the single-world order)
    stream_means = [
        np.stack([np.asarray(d, dtype=float)[rng.integers(0, len(d), (n_resamples, len(d)))].mean(1) for d in streams])
        for streams in worlds
    ]
    resample = np.arange(n_resamples)[:, None]
    world_means = np.stack(
        [means[rng.integers(0, len(means), (n_resamples, len(means))), resample].mean(1) for means in stream_means]
    )
    drawn = rng.integers(0, len(worlds), (n_resamples, len(worlds)))
    # the j-th world drawn in replicate r takes the world's resample (r + j) mod n_resamples
    return world_means[drawn, (resample + np.arange(len(worlds))) % n_resamples].mean(1)


def pooled_compare(worlds, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """The mean over worlds of the per-world difference (compare's `difference`), its hierarchical
    95% interval, and the spread of the per-world differences (sd with ddof=1, NaN for one world;
    min; max), as a dict."""
    per_world = np.array([np.mean([np.mean(d) for d in streams]) for streams in worlds])
    low, high = interval(hierarchical_replicates(worlds, n_resamples, seed))
    return dict(
        difference=float(per_world.mean()),
        ci_low=low,
        ci_high=high,
        n_worlds=len(worlds),
        world_sd=float(per_world.std(ddof=1)) if len(worlds) > 1 else float("nan"),
        world_min=float(per_world.min()),
        world_max=float(per_world.max()),
        n_streams=sum(len(streams) for streams in worlds),
        n_questions=int(sum(len(d) for streams in worlds for d in streams)),
    )
