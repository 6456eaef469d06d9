"""The CaMeLS entry point: `task=train` meta-trains a weight model, `task=eval` evaluates it.

Hydra, configs in conf/. task=train runs meta_train.py; task=eval runs online adaptation and QA
scoring (README: "Online adaptation evaluation"):

    python run.py task=eval model=uniform|ssm|TFIDF|CaMeLS [weight_model_path=...] dataset=... \
        base_model=... [base_model_state_dict=...] lr=... [downsample_to=k seed=s qa_lt_final=true]
    python run.py -m task=eval model=ssm lr=1e-4,2.5e-5 ...      (one run folder per job)

Each evaluation run folder (outputs/eval/<dataset>/<method>-<stream>-.../<base>/<time>/) holds:
    config.yaml    the resolved configuration (Hydra's unresolved copies are in .hydra/)
    results.csv    one row per question, then summary rows (EM, mean F1, max F1, mean NLL)
    summary.json   the run's numbers in the schema report.py reads
    metrics.json   details: adaptation loss/steps/time, unrelated-QA before adapting,
                   light-tuning validations, the eval_every_k curve
"""
import json
import logging
import time
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import util
from configs import method_name, stream_name
from exp_datasets import SPLITS, QACollator, load_split, make_stream
from subroutines import evaluate_qa, light_tune, parse_eval_modes, weighted_train
from util import UsageError
from weight_model import WEIGHT_MODELS, build_weight_model, load_weight_model

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Checks that run before anything is loaded


def check_eval_config(cfg):
    """What the schema (configs.EvalConfig) cannot say: registries, files, options that go together."""
    util.check_values(cfg)
    parse_eval_modes(cfg.eval)
    name = cfg.model.get("name")
    if name not in WEIGHT_MODELS:
        raise UsageError(f"model={name} is unknown; choose one of {', '.join(WEIGHT_MODELS)}")
    if WEIGHT_MODELS[name].learned and not cfg.weight_model_path:
        raise UsageError(f"model={name} needs weight_model_path=/path/to/checkpoint (a folder or .pt from task=train)")
    if cfg.weight_model_path and not WEIGHT_MODELS[name].learned:
        raise UsageError("weight_model_path is only used with a learned weight model; drop it or use model=CaMeLS")
    if cfg.test_path and not Path(cfg.test_path).is_file():
        raise UsageError(f"test_path {cfg.test_path} does not exist; point it at a CSV of the dataset's format")
    util.base_state_dict(cfg)
    util.check_wandb(cfg)


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


def load_weight_model_for_eval(cfg, tokenizer, stream_texts):
    if cfg.weight_model_path:
        weight_model = load_weight_model(cfg.weight_model_path, tokenizer, cfg.model)
        cfg.model.pretrained_model = weight_model.options["pretrained_model"]  # record the real body
        return weight_model
    return build_weight_model(cfg.model, tokenizer, documents=lambda: dataset_texts(cfg.dataset, stream_texts))


def metric_subset(summary):
    return None if summary is None else {k: summary[k] for k in ("em", "f1", "nll")}


def results_frame(rows, summary):
    """Per-question rows, then one summary row per metric (its value in that metric's column)."""
    columns = ["question", "answer", "prediction", "predictions", "f1s", "f1", "max_f1", "em", "nll"]
    frame = pd.DataFrame(rows, columns=columns)
    labels = {"em": "EM", "f1": "mean F1", "max_f1": "max F1", "nll": "mean NLL"}
    extra = [{"question": "<summary>", "answer": label, key: summary[key]}
             for key, label in labels.items() if summary[key] is not None]
    return pd.concat([frame, pd.DataFrame(extra, columns=columns)], ignore_index=True)


def evaluate(cfg: DictConfig, run_dir: Path):
    """One online-adaptation run as configured; writes the run folder and returns summary.json's dict."""
    started = time.time()
    check_eval_config(cfg)
    materialize(cfg, ["base_model", "tokenizer_name", "dataset.data_dir"])
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    device = util.pick_device(cfg.device)
    dtype = util.pick_dtype(cfg.dtype)
    util.set_seed(cfg.seed)
    eval_modes = list(cfg.eval)
    progress = bool(cfg.progress)

    tokenizer = util.load_tokenizer(cfg.tokenizer_name or cfg.base_model)
    base_model = util.load_causal_lm(cfg.base_model, util.base_state_dict(cfg), torch_dtype=dtype)
    stream = make_stream(load_split(cfg.dataset, cfg.split, cfg.test_path), cfg.downsample_to, cfg.seed)
    texts = [document.text for document in stream]
    questions = [example for document in stream for example in document.examples]
    weight_model = load_weight_model_for_eval(cfg, tokenizer, texts)
    collator = QACollator.from_config(tokenizer, cfg.dataset)
    unrelated = None
    if cfg.unrelated_qa_eval:
        unrelated = load_split(cfg.dataset, cfg.unrelated_split)[: cfg.unrelated_questions or None]
    if cfg.qa_lt_final:
        lt_train = load_split(cfg.dataset, "qa_train")
        lt_val = load_split(cfg.dataset, "qa_val")[: cfg.lt_val_questions or None]
    if cfg.grad_checkpointing:
        base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base_model.config.use_cache = False
    base_model.to(device)
    weight_model.to(device)
    method = method_name(cfg.model.name, cfg.qa_lt_final)
    log.info(f"{method} on {cfg.dataset.name}/{stream_name(cfg.split, cfg.test_path)}: {len(texts)} documents, "
             f"{len(questions)} questions, base {cfg.base_model}, lr {cfg.lr}, device {device}; output {run_dir}")

    def score(examples, desc):
        return evaluate_qa(base_model, tokenizer, examples, collator, device, eval_modes, cfg.eval_batch_size,
                           cfg.max_new_tokens, desc=desc, progress=progress)

    metrics = {}
    init_summary = score(questions, "QA before")[1] if cfg.eval_init else None
    if unrelated is not None and cfg.eval_init:
        metrics["unrelated_init"] = metric_subset(score(unrelated, "unrelated QA before")[1])
    curve = []

    def record(n_documents):
        curve.append(dict(n_documents=n_documents, **score(questions, f"QA after {n_documents} docs")[1]))
        log.info(f"after {n_documents} documents: {curve[-1]}")

    adapt_started = time.time()
    adaptation = weighted_train(base_model, weight_model, texts, collator, device, optimizer=cfg.optimizer,
                                lr=cfg.lr, batch_size=cfg.batch_size, grad_acc_steps=cfg.grad_acc_steps,
                                grad_clip_thresh=cfg.grad_clip_thresh, n_epochs=cfg.n_epochs, progress=progress,
                                every_k_documents=cfg.eval_every_k, callback=record)
    metrics["adaptation"] = dict(adaptation, wall_time_s=time.time() - adapt_started)
    if cfg.qa_lt_final:
        metrics["light_tuning"] = light_tune(
            base_model, tokenizer, lt_train, lt_val, collator, device, lr=cfg.lt_lr, batch_size=cfg.lt_batch_size,
            val_steps=cfg.lt_val_steps, patience=cfg.lt_patience, stopping_metric=cfg.lt_stopping_metric,
            max_epochs=cfg.lt_epochs, eval_modes=eval_modes, eval_batch_size=cfg.eval_batch_size,
            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, progress=progress)
    rows, final = score(questions, "QA after")
    unrelated_summary = metric_subset(score(unrelated, "unrelated QA after")[1]) if unrelated is not None else None
    metrics["curve"] = curve

    summary = {
        "method": method, "lr": float(cfg.lr), "seed": int(cfg.seed), "dataset": str(cfg.dataset.name),
        "split": str(cfg.test_path) if cfg.test_path else str(cfg.split), "base_model": str(cfg.base_model),
        "downsample_to": int(cfg.downsample_to), "optimizer": str(cfg.optimizer), "n_epochs": int(cfg.n_epochs),
        "n_documents": len(texts), "n_questions": len(questions),
        "em": final["em"], "f1": final["f1"], "max_f1": final["max_f1"], "nll": final["nll"],
        "init": metric_subset(init_summary), "unrelated": unrelated_summary,
        "wall_time_s": time.time() - started, "run_dir": str(run_dir),
    }
    write_outputs(cfg, run_dir, rows, final, summary, metrics)
    log.info("summary: " + json.dumps({k: summary[k] for k in ("em", "f1", "max_f1", "nll", "init", "wall_time_s")}))
    if cfg.wandb:
        import wandb

        run = wandb.init(project=cfg.wandb_project, dir=str(run_dir), config=OmegaConf.to_container(cfg, resolve=True))
        run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        run.finish()
    return summary


def materialize(cfg, keys):
    """Replace interpolations this run reads by their values, so config.yaml records them."""
    for key in keys:
        if OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(cfg, key, OmegaConf.select(cfg, key))


def recorded_config(cfg):
    """The configuration resolved, except ${tiny_world:...} interpolations the run never read:
    resolving one would build the default tiny world just to write its path down."""
    def walk(node, raw):
        if isinstance(raw, dict):
            return {k: raw[k] if isinstance(raw[k], str) and "${tiny_world:" in raw[k] else walk(node[k], raw[k])
                    for k in raw}
        if isinstance(raw, list):
            return [walk(n, r) for n, r in zip(node, raw)]
        return node

    return walk(cfg, OmegaConf.to_container(cfg, resolve=False))


def write_outputs(cfg, run_dir, rows, final, summary, metrics):
    run_dir.mkdir(parents=True, exist_ok=True)
    util.atomic_write_text(OmegaConf.to_yaml(recorded_config(cfg)), run_dir / "config.yaml")
    with util.atomic_path(run_dir / "results.csv") as tmp:
        results_frame(rows, final).to_csv(tmp, index=False)
    util.atomic_write_text(json.dumps(metrics, indent=2), run_dir / "metrics.json")
    util.atomic_write_text(json.dumps(summary, indent=2), run_dir / "summary.json")


# ---------------------------------------------------------------------------------------------


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    with util.usage_errors_exit():
        if cfg.task_name == "train":
            from meta_train import train

            return train(cfg)
        if cfg.task_name == "eval":
            summary = evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
            print(json.dumps({k: summary[k] for k in ("method", "lr", "em", "f1", "nll", "wall_time_s", "run_dir")}))
            return summary
        raise UsageError(f"task={cfg.task_name} is unknown; use task=train or task=eval")


if __name__ == "__main__":
    util.run_cli(main)
