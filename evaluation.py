"""Online-adaptation evaluation (`run.py task=eval`), from a composed config to a run folder: load the
base model, the weight model and the stream, adapt on the stream, score every question, write the
outputs. demo.py and the tiny world's report reach the same code.

Each evaluation run folder holds:
    config.yaml    the resolved configuration (Hydra's unresolved copies are in .hydra/)
    results.csv    one row per question, then summary rows (EM, mean F1, max F1, mean NLL)
    summary.json   the run's numbers in the schema report.py reads: EM/F1 as fractions in [0, 1]
                   (em, f1, max_f1), with the same numbers in % beside them (em_percent, ...)
    metrics.json   details: adaptation loss/steps/time, unrelated-QA before adapting,
                   light-tuning validations, the eval_every_k curve
"""

import logging
import math
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from exp_datasets import QACollator, load_split, make_stream
from plumbing import distributed, environment, files, loading, run_folder, schemas
from plumbing.errors import UsageError
from plumbing.schemas import SPLITS, method_name, stream_name
from subroutines import (
    AdaptationSettings,
    Decoding,
    LightTuneSettings,
    check_optimizer,
    evaluate_qa,
    light_tune,
    parse_eval_modes,
    question_sample,
    weighted_train,
)
from weight_model import WEIGHT_MODELS, build_weight_model, load_weight_model

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
    schemas.check_values(cfg)
    Decoding.from_config(cfg).check(parse_eval_modes(cfg.eval)[0])
    name = cfg.model.get("name")
    if name not in WEIGHT_MODELS:
        raise UsageError(f"model={name} is unknown; choose one of {', '.join(WEIGHT_MODELS)}")
    if WEIGHT_MODELS[name].learned and not cfg.weight_model_path:
        raise UsageError(f"model={name} needs weight_model_path=/path/to/checkpoint (a folder or .pt from task=train)")
    if cfg.test_path and not Path(cfg.test_path).is_file():
        raise UsageError(f"test_path {cfg.test_path} does not exist; point it at a CSV of the dataset's format")
    loading.base_state_dict(cfg)
    environment.pick_device(cfg.device)
    check_optimizer(cfg.optimizer)
    if distributed.env_world_size() > 1:
        raise UsageError("task=eval runs in one process; start it with python, not torchrun")
    environment.check_wandb(cfg)


# ---------------------------------------------------------------------------------------------
# Evaluation


def dataset_texts(dataset_cfg, stream_texts):
    """Every document the dataset config reaches (all splits) plus the stream's: TF-IDF's corpus."""
    texts = list(stream_texts)
    for split in SPLITS:
        try:
            texts += [example.text for example in load_split(dataset_cfg, split)]
        except UsageError:  # a split whose files this config does not have is not part of the corpus
            continue
    return texts


def load_weight_model_for_eval(cfg, tokenizer, stream, base_model):
    """The weight model that weighs `stream` (a list of Documents) for `base_model` (bound to it, as
    the model is before the stream): loaded from weight_model_path, or built from its config (TF-IDF
    fits on the dataset's texts, the oracle reads the stream's answers)."""
    if cfg.weight_model_path and not WEIGHT_MODELS[cfg.model.name].learned:
        # one sweep may cover model=uniform,ssm,TFIDF,CaMeLS with the CaMeLS checkpoint given once
        log.info(f"model={cfg.model.name} has no parameters: weight_model_path is not used")
        cfg.weight_model_path = None
    if cfg.weight_model_path:
        weight_model = load_weight_model(cfg.weight_model_path, tokenizer, cfg.model)
        cfg.model.pretrained_model = weight_model.options["pretrained_model"]  # record the real body
        return weight_model.bind(base_model)
    texts = [document.text for document in stream]
    return build_weight_model(
        cfg.model, tokenizer, documents=lambda: dataset_texts(cfg.dataset, texts), stream=stream
    ).bind(base_model)


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
    old = RUN_FOLDER.claim(run_dir, cfg)
    if old is not None and (run_dir / "summary.json").is_file():
        summary = files.read_json(
            run_dir / "summary.json",
            "the evaluation summary",
            "delete it to run the evaluation again, or pass overwrite=true",
            keys=("diverged",),
        )
        if summary.get("diverged"):
            raise UsageError(
                f"{run_dir} holds this evaluation, which diverged; lower lr={cfg.lr}, or pass "
                "overwrite=true to run it again"
            )
        log.info(f"{run_dir} holds this evaluation already complete; nothing to do")
        return summary
    state_path = run_dir / EVAL_STATE
    resume_state = (
        files.load_tensors(
            state_path,
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
        if old is not None and state_path.is_file()
        else None
    )
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    device = environment.pick_device(cfg.device)
    dtype = environment.pick_dtype(cfg.dtype)
    environment.set_seed(cfg.seed)
    eval_modes = list(cfg.eval)
    progress = bool(cfg.progress)

    tokenizer = loading.load_tokenizer(cfg.tokenizer_name or cfg.base_model)
    base_model = loading.load_causal_lm(cfg.base_model, loading.base_state_dict(cfg), torch_dtype=dtype)
    stream = make_stream(load_split(cfg.dataset, cfg.split, cfg.test_path), cfg.downsample_to, cfg.seed)
    texts = [document.text for document in stream]
    questions = [example for document in stream for example in document.examples]
    weight_model = load_weight_model_for_eval(cfg, tokenizer, stream, base_model)
    collator = QACollator.from_config(
        tokenizer, cfg.dataset, models=[base_model, weight_model], answer_match=cfg.answer_match
    )
    decoding = Decoding.from_config(cfg)
    unrelated = None
    if cfg.unrelated_qa_eval:
        unrelated = question_sample(load_split(cfg.dataset, cfg.unrelated_split), cfg.unrelated_questions, cfg.seed)
    if cfg.qa_lt_final:
        lt_train = load_split(cfg.dataset, "qa_train")
        lt_val = question_sample(load_split(cfg.dataset, "qa_val"), cfg.lt_val_questions, cfg.seed)
    if cfg.grad_checkpointing:
        base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base_model.config.use_cache = False
    base_model.to(device)
    weight_model.to(device)
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

    def save_state(state):
        files.atomic_torch_save(dict(state, metrics=metrics, init=init_summary, curve=curve), state_path)

    def record(n_documents):
        curve.append(dict(n_documents=n_documents, **score(questions, f"QA after {n_documents} docs")[1]))
        log.info(f"after {n_documents} documents: {curve[-1]}")

    adapt_started = time.time()
    if weight_model.adapts:
        adaptation = weighted_train(
            base_model,
            weight_model,
            texts,
            collator,
            device,
            AdaptationSettings.from_config(cfg),
            progress=progress,
            callback=record,
            resume_state=resume_state,
            save_state=save_state,
        )
    else:  # the no-adaptation floor: the base model as it is
        adaptation = dict(n_steps=0, n_batches=0, mean_loss=None, diverged=None)
    metrics["adaptation"] = dict(adaptation, wall_time_s=time.time() - adapt_started)
    diverged = adaptation["diverged"]
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
    shown = ("em_percent", "f1_percent", "max_f1_percent", "nll", "wall_time_s")
    log.info("summary: " + files.strict_json({k: summary[k] for k in shown}))
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
