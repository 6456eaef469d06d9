"""Paired comparison of methods evaluated on the same test streams: each method's difference in
mean F1 (or EM) to the best baseline, with 95% confidence intervals by a paired bootstrap.

Two methods run with the same stream seed are asked the same questions in the same order
(run.py's results.csv, one row per question), so their per-question scores pair up. The
difference is the mean over streams of the per-stream difference of mean scores (the difference
of the table's means). Its intervals come from resampling
  - the questions within each stream (streams fixed): the uncertainty of the question sample;
  - the streams, and the questions within each drawn stream: also the stream-to-stream spread.
Both are percentile intervals of `n_resamples` bootstrap replicates drawn with a fixed seed.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from plumbing.errors import UsageError

SUMMARY_ROW = "<summary>"
CONFIDENCE = 0.95


def question_scores(run_dir, metric="f1"):
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
            raise UsageError(f"runs {runs[seed]} and {reference_runs[seed]} have seed {seed} but not the same "
                             "questions; compare runs of one stream (same split, downsample_to and seed)")
        differences.append(scores - other_scores)
    return seeds, differences


def bootstrap_replicates(differences, n_resamples=10_000, seed=0, over_streams=True):
    """Bootstrap replicates of the mean over streams of the per-stream mean difference.

    `differences`: one 1-D array of per-question differences per stream. Within each stream the
    questions are drawn with replacement; with `over_streams` the streams are drawn with
    replacement too (each drawn stream with its own question resample)."""
    if not differences or any(len(d) == 0 for d in differences):
        raise ValueError("every stream needs at least one question")
    rng = np.random.default_rng(seed)
    # per stream, n_resamples question resamples -> n_streams x n_resamples means
    stream_means = np.stack([np.asarray(d, dtype=float)[rng.integers(0, len(d), (n_resamples, len(d)))].mean(1)
                             for d in differences])
    if not over_streams:
        return stream_means.mean(0)
    n_streams = len(differences)
    drawn = rng.integers(0, n_streams, (n_resamples, n_streams))
    return stream_means[drawn, np.arange(n_resamples)[:, None]].mean(1)


def interval(replicates, confidence=CONFIDENCE):
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def compare(differences, n_resamples=10_000, seed=0):
    """The difference and its two intervals, as a dict."""
    estimate = float(np.mean([np.mean(d) for d in differences]))
    questions = interval(bootstrap_replicates(differences, n_resamples, seed, over_streams=False))
    streams = interval(bootstrap_replicates(differences, n_resamples, seed, over_streams=True))
    return dict(difference=estimate, ci_questions_low=questions[0], ci_questions_high=questions[1],
                ci_streams_low=streams[0], ci_streams_high=streams[1], n_streams=len(differences),
                n_questions=int(sum(len(d) for d in differences)))


def paired_table(best, runs, baselines, setting_columns, same_setting, metric="f1", n_resamples=10_000, seed=0):
    """Per setting of `best` (report.best_lrs: each method at its chosen lr) and each method: the
    difference of its test `metric` to the best baseline (of `baselines` present, the one with the
    highest mean test metric: the hardest comparison) with both intervals. `runs`: report.load_runs
    of the test tree; `same_setting(a, b)`: whether two rows share the `setting_columns`. Rows:
    setting columns, method, lr, baseline, and compare()'s fields."""
    if metric not in ("f1", "em"):
        raise UsageError(f"the paired comparison scores questions by f1 or em, not {metric}")
    rows = []
    for _, group in best.groupby(setting_columns, dropna=False, sort=False):
        scored = group[group[f"{metric}_fraction_mean"].notna()]
        candidates = scored[scored["method"].isin(baselines)]
        if candidates.empty:
            continue
        reference = candidates.sort_values(f"{metric}_fraction_mean", ascending=False, kind="stable").iloc[0]

        def seeds_of(row):
            return {r["seed"]: r["run_dir"] for r in runs if r["method"] == row["method"]
                    and np.isclose(r["lr"], row["lr"], rtol=1e-9, atol=0) and same_setting(r, row)}

        reference_runs = seeds_of(reference)
        for _, row in scored.iterrows():
            if row["method"] == reference["method"]:
                continue
            stream_seeds, differences = paired_differences(seeds_of(row), reference_runs, metric)
            if not differences:
                continue
            entry = {c: row[c] for c in setting_columns}
            entry.update(method=row["method"], lr=row["lr"], baseline=reference["method"],
                         baseline_lr=reference["lr"], seeds=";".join(map(str, stream_seeds)),
                         **compare(differences, n_resamples, seed))
            rows.append(entry)
    return pd.DataFrame(rows)
