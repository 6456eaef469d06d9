"""Online-adaptation evaluation (`run.py task=eval`), from a composed config to a run folder: load the
base model, the weight model and the stream, adapt on the stream, score every question, write the
outputs. demo.py and the tiny world's report reach the same code.

Each evaluation run folder holds:
    config.yaml    the resolved configuration (Hydra's unresolved copies are in .hydra/)
    results.csv    one row per question, then summary rows (EM, mean F1, max F1, mean NLL)
    summary.json   the run's numbers in the schema report.py reads
    metrics.json   details: adaptation loss/steps/time, unrelated-QA before adapting,
                   light-tuning validations, the eval_every_k curve
"""

import logging
import math
import time
from pathlib import Path
from typing import Sequence, Tuple

import pandas as pd
from omegaconf import DictConfig, OmegaConf

import adaptation
from adaptation import adapt_on_stream, load_for_adaptation
from exp_datasets import load_split, make_stream
from plumbing import environment, files, run_folder
from plumbing.errors import UsageError
from plumbing.schemas import method_name, stream_name
from subroutines import Decoding, LightTuneSettings, evaluate_qa, light_tune, parse_eval_modes, question_sample

log = logging.getLogger(__name__)
# summary.json's fractions that it also gives in percent
PERCENT_FIELDS = ("em", "f1", "max_f1")
EVAL_STATE = "eval_state.pt"
RUN_FOLDER = run_folder.RunProtocol(
    outputs=("summary.json", "results.csv", "metrics.json", "config.yaml", EVAL_STATE),
    resumable=(*run_folder.RUNTIME_OPTIONS, "save_state_every"),
    state=EVAL_STATE,
)


# ---------------------------------------------------------------------------------------------
# Checks that run before anything is loaded


def check_config(cfg):
    """What the schema (schemas.EvalConfig) cannot say: registries, files, options that go together."""
    adaptation.check_adaptation(cfg)
    Decoding.from_config(cfg).check(parse_eval_modes(cfg.eval)[0])


# ---------------------------------------------------------------------------------------------
# Evaluation


def load_weight_model_for_eval(cfg, tokenizer, stream, base_model):
    """The weight model that weighs `stream` (a list of Documents) for `base_model` (bound to it, as the
    model is before the stream): loaded from weight_model_path, or built from its config (TF-IDF fits on
    the dataset's texts, the oracle reads the stream's answers)."""
    texts = [document.text for document in stream]
    return adaptation.configured_weight_model(
        cfg, tokenizer, base_model, stream, lambda: adaptation.dataset_texts(cfg.dataset, texts)
    )


def score_qa(
    model,
    tokenizer,
    qa_pairs: Sequence[Tuple[str, str]],
    eval_modes: Sequence[str] = ("em", "ppl"),
    decoding: Decoding = Decoding(method="greedy"),
    max_question_len: int = 128,
    max_answer_len: int = 24,
    batch_size: int = 16,
) -> Tuple[list, dict]:
    """Score `model` on (question, answer) pairs as task=eval does (evaluate_qa): returns the per-question
    rows and the summary (em, f1, max_f1: top-1 answers generated with `decoding`; nll: mean answer NLL,
    with "ppl" among `eval_modes`). The answer is the training target and the only gold alternative."""
    from exp_datasets import Example, QACollator
    from exp_datasets.collate import min_positions

    examples = [
        Example(text="", question=question, answer=answer, doc_id=str(i))
        for i, (question, answer) in enumerate(qa_pairs)
    ]
    collator = QACollator(
        tokenizer,
        max_question_len=max_question_len,
        max_answer_len=max_answer_len,
        qa_eos=True,
        max_positions=min_positions([model]),
    )
    device = next(model.parameters()).device
    return evaluate_qa(
        model, tokenizer, examples, collator, device, list(eval_modes), batch_size, decoding, progress=False
    )


def metric_subset(summary):
    return None if summary is None else {k: summary[k] for k in ("em", "f1", "em_at_k", "f1_at_k", "nll")}


def results_frame(rows, summary):
    """Per-question rows, then one summary row per metric (its value in that metric's column)."""
    columns = [
        "question",
        "answer",
        "golds",
        "prediction",
        "predictions",
        "f1s",
        "f1",
        "max_f1",
        "em",
        "em_at_k",
        "f1_at_k",
        "nll",
        "n_answer_tokens",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    labels = {
        "em": "EM",
        "f1": "mean F1",
        "max_f1": "max F1",
        "em_at_k": "EM top-K (any)",
        "f1_at_k": "mean F1 top-K (mean over K)",
        "nll": "mean NLL (over answer tokens)",
    }
    extra = [
        {"question": "<summary>", "answer": label, key: summary[key]}
        for key, label in labels.items()
        if summary[key] is not None
    ]
    return pd.concat([frame, pd.DataFrame(extra, columns=columns)], ignore_index=True)


def evaluate(cfg: DictConfig, run_dir: Path):
    """One online-adaptation run as configured; writes the run folder and returns summary.json's dict."""
    started = time.time()
    check_config(cfg)
    check_folder(cfg, run_dir)
    summary = RUN_FOLDER.finished(
        run_dir,
        cfg,
        "the evaluation summary",
        "delete it to run the evaluation again, or pass overwrite=true",
        keys=("diverged",),
    )
    if summary is not None:
        if summary.get("diverged"):
            raise UsageError(
                f"{run_dir} holds this evaluation, which diverged; lower lr={cfg.lr}, or pass "
                "overwrite=true to run it again"
            )
        log.info(f"{run_dir} holds this evaluation already complete; nothing to do")
        return summary
    eval_modes = list(cfg.eval)
    progress = bool(cfg.progress)

    stream = make_stream(load_split(cfg.dataset, cfg.split, cfg.test_path), cfg.downsample_to, cfg.seed)
    texts = [document.text for document in stream]
    questions = [example for document in stream for example in document.examples]
    unrelated = None
    if cfg.unrelated_qa_eval:
        unrelated = question_sample(load_split(cfg.dataset, cfg.unrelated_split), cfg.unrelated_questions, cfg.seed)
    if cfg.qa_lt_final:
        lt_train = load_split(cfg.dataset, "qa_train")
        lt_val = question_sample(load_split(cfg.dataset, "qa_val"), cfg.lt_val_questions, cfg.seed)
    parts = load_for_adaptation(cfg, stream, lambda: adaptation.dataset_texts(cfg.dataset, texts))
    base_model, tokenizer, weight_model, collator, device = (
        parts.base_model,
        parts.tokenizer,
        parts.weight_model,
        parts.collator,
        parts.device,
    )
    # the inputs loaded: the folder becomes this run's
    resume_state = RUN_FOLDER.claim_with_state(
        run_dir,
        cfg,
        "evaluation state",
        keys=(
            "model",
            "optimizer",
            "n_steps",
            "n_batches",
            "total_loss",
            "documents_seen",
            "rng",
            "metrics",
            "init",
            "curve",
        ),
        fix="delete it to run the stream from its start",
    )
    state_path = run_dir / EVAL_STATE
    decoding = Decoding.from_config(cfg)
    method = cfg.method_label or method_name(cfg.model.name, cfg.qa_lt_final)
    log.info(
        f"{method} on {cfg.dataset.name}/{stream_name(cfg.split, cfg.test_path)}: {len(texts)} documents, "
        f"{len(questions)} questions, base {cfg.base_model}, lr {cfg.lr}, device {device}; output {run_dir}"
    )

    def score(examples, desc):
        return evaluate_qa(
            base_model,
            tokenizer,
            examples,
            collator,
            device,
            eval_modes,
            cfg.eval_batch_size,
            decoding,
            desc=desc,
            progress=progress,
        )

    if resume_state is not None:  # the scores before adapting and along the stream so far were saved with it
        metrics, init_summary, curve = resume_state["metrics"], resume_state["init"], resume_state["curve"]
        log.info(f"resuming the stream after document {resume_state['documents_seen']} from {state_path}")
    else:
        metrics = {}
        init_summary = score(questions, "QA before")[1] if cfg.eval_init else None
        if unrelated is not None and cfg.eval_init:
            metrics["unrelated_init"] = metric_subset(score(unrelated, "unrelated QA before")[1])
        curve = []

    def record(n_documents):
        curve.append(dict(n_documents=n_documents, **score(questions, f"QA after {n_documents} docs")[1]))
        log.info(f"after {n_documents} documents: {curve[-1]}")

    adaptation_result = adapt_on_stream(
        cfg,
        parts,
        texts,
        state_path,
        resume_state,
        saved_with_state=lambda: dict(metrics=metrics, init=init_summary, curve=curve),
        callback=record,
        every_k_documents=cfg.eval_every_k,
    )
    metrics["adaptation"] = adaptation_result
    diverged = adaptation_result["diverged"]
    if diverged and diverged["before_any_update"]:
        raise UsageError(
            f"the weighted loss of document {diverged['document']} is not finite ({diverged['value']}) "
            "before any update, so no learning rate causes it: check the base model, the weight model "
            f"(model={cfg.model.name}) and the dataset's lengths "
            f"(max_text_len={cfg.dataset.max_text_len})"
        )
    if diverged:
        summary = run_summary(
            cfg, method, weight_model.adapts, texts, questions, None, None, None, started, run_dir, diverged=True
        )
        write_outputs(cfg, run_dir, [], None, summary, metrics)
        raise UsageError(
            f"adaptation diverged at document {diverged['document']} of {len(texts)} "
            f"({diverged['value']}); lr={cfg.lr} is too large for optimizer={cfg.optimizer}: lower lr. "
            f"{run_dir / 'summary.json'} marks the run diverged"
        )
    if cfg.qa_lt_final:
        metrics["light_tuning"] = light_tune(
            base_model,
            tokenizer,
            lt_train,
            lt_val,
            collator,
            device,
            LightTuneSettings.from_config(cfg),
            progress=progress,
        )
    rows, final = score(questions, "QA after")
    unrelated_summary = metric_subset(score(unrelated, "unrelated QA after")[1]) if unrelated is not None else None
    metrics["curve"] = curve

    diverged = not all(math.isfinite(final[k]) for k in ("em", "f1", "nll") if final[k] is not None)
    summary = run_summary(
        cfg,
        method,
        weight_model.adapts,
        texts,
        questions,
        final,
        metric_subset(init_summary),
        unrelated_summary,
        started,
        run_dir,
        diverged,
    )
    write_outputs(cfg, run_dir, rows, final, summary, metrics)
    if diverged:
        raise UsageError(
            f"the adapted model's scores are not finite: the run diverged; lower lr={cfg.lr}. "
            f"{run_dir / 'summary.json'} marks it diverged"
        )
    log.info(
        "summary: " + files.strict_json({k: summary[k] for k in ("em", "f1", "max_f1", "nll", "init", "wall_time_s")})
    )
    run = environment.start_wandb(cfg, run_dir)
    if run is not None:
        run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.finish()
    return summary


def run_summary(cfg, method, adapts, texts, questions, final, init, unrelated, started, run_dir, diverged):
    """summary.json's dict; a diverged run has no metrics (null), only `diverged: true`. `adapts`:
    false for the no-adaptation floor, whose lr is never used."""
    final = {} if diverged or final is None else final
    return with_percents(
        {
            "method": method,
            "adapts": bool(adapts),
            "lr": float(cfg.lr),
            "seed": int(cfg.seed),
            "dataset": str(cfg.dataset.name),
            "split": str(cfg.test_path) if cfg.test_path else str(cfg.split),
            "base_model": str(cfg.base_model),
            "downsample_to": int(cfg.downsample_to),
            "optimizer": str(cfg.optimizer),
            "n_epochs": int(cfg.n_epochs),
            "n_documents": len(texts),
            "n_questions": len(questions),
            "em": final.get("em"),
            "f1": final.get("f1"),
            "max_f1": final.get("max_f1"),
            "top_k": final.get("top_k"),
            "em_at_k": final.get("em_at_k"),
            "f1_at_k": final.get("f1_at_k"),
            "nll": final.get("nll"),
            "decoding": str(cfg.decoding),
            "init": init,
            "unrelated": None if diverged else unrelated,
            "diverged": bool(diverged),
            "wall_time_s": time.time() - started,
            "run_dir": str(run_dir),
        }
    )


def with_percents(summary):
    """`summary` with `<name>_percent` beside each EM/F1 fraction (None where it is None): the numbers
    as a person reads them. Also completes summaries written before those fields existed."""
    percents = {
        f"{name}_percent": None if summary.get(name) is None else 100 * summary[name] for name in PERCENT_FIELDS
    }
    return {**summary, **percents}


def check_folder(cfg, run_dir):
    """Refuse a run folder holding an evaluation with other options, before anything is loaded."""
    RUN_FOLDER.check(run_dir, cfg)


def recorded_config(cfg):
    """The configuration as config.yaml records it: every value resolved."""
    return OmegaConf.to_container(cfg, resolve=True)


def write_outputs(cfg, run_dir, rows, final, summary, metrics):
    """The run's files, summary.json last (it marks the run complete); the resume state goes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(OmegaConf.to_yaml(recorded_config(cfg)), run_dir / "config.yaml")
    if final is not None:
        with files.atomic_path(run_dir / "results.csv") as tmp:
            results_frame(rows, final).to_csv(tmp, index=False)
    files.atomic_write_text(files.strict_json(metrics, indent=2), run_dir / "metrics.json")
    files.atomic_write_text(files.strict_json(summary, indent=2), run_dir / "summary.json")
    (run_dir / EVAL_STATE).unlink(missing_ok=True)
