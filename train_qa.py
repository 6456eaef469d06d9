"""QA pre-tuning of a causal LM, the base model of meta-training and evaluation (configs: qa_conf/).

It learns to continue a question with " <answer>" (README: "QA model pretraining").

    python train_qa.py dataset=squad model=gpt2-xl

Output folder (hydra.run.dir): outputs/qa_pretraining/<dataset>/<model label>-lr<lr>-bs<batch>x<acc>-seed<seed>/
    .hydra/config.yaml   the composed configuration (overrides.yaml: the command line)
    run_options.json     the options of the run: a rerun into the folder must have the same ones
    metrics.jsonl        one row per validation (the first is before any training)
    best.json            metric values, step and path of each kept checkpoint
    checkpoints/lowest_nll/, highest_f1/, highest_em/
                         save_pretrained folders (model + tokenizer) that also hold state_dict.pt:
                         use the folder as base_model, or state_dict.pt as base_model_state_dict
    resume.pt            model, optimiser and progress at the last validation (save_resume_state):
                         the same command continues an interrupted run from there
    done.json            written last: the same command then has nothing to do
"""

import json
import math
import shutil
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

import tiny_world
from exp_datasets import QACollator, load_split
from plumbing import checks, environment, errors, files, loading, run_folder, schemas
from subroutines import Decoding, evaluate_qa, make_optimizer, qa_tuning_loop, question_sample

# checkpoint name -> (validation metric, direction)
CRITERIA = {"lowest_nll": ("nll", "min"), "highest_f1": ("f1", "max"), "highest_em": ("em", "max")}
VAL_MODES = ("em", "ppl")
RESUME_STATE, DONE = "resume.pt", "done.json"
RUN_FOLDER = run_folder.RunProtocol(
    outputs=("metrics.jsonl", "best.json", "checkpoints", RESUME_STATE, DONE),
    resumable=(*run_folder.RUNTIME_OPTIONS, "eval_batch_size", "save_resume_state"),
    state=RESUME_STATE,
)


class BestTracker:
    """The best validation so far under each criterion.

    `update(metrics, step, epoch)` returns the criteria this validation strictly beat, so a tie keeps
    the earlier checkpoint. A metric that is missing or NaN never counts as an improvement.
    """

    def __init__(self, criteria=None):
        self.criteria = dict(criteria or CRITERIA)
        self.best = {}

    def update(self, metrics, step, epoch):
        improved = []
        for name, (key, direction) in self.criteria.items():
            value = metrics.get(key)
            if value is None or math.isnan(value):
                continue
            record = self.best.get(name)
            if record is None or (value < record["value"] if direction == "min" else value > record["value"]):
                self.best[name] = dict(metric=key, value=value, step=step, epoch=epoch)
                improved.append(name)
        return improved


class EarlyStopping:
    """Patience on a lower-is-better value: `update` returns True once `patience` validations in a
    row have not improved on the lowest value seen. patience=None never stops."""

    def __init__(self, patience):
        self.patience = patience
        self.lowest = math.inf
        self.stale = 0

    def update(self, value):
        if value is not None and not math.isnan(value) and value < self.lowest:
            self.lowest, self.stale = value, 0
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience


def check_config(cfg):
    """Reject bad knobs with one line before any data or model is loaded: the ranges and choices of
    the schema (schemas.QATuneConfig), and the state dict's file."""
    schemas.check_values(cfg)
    if cfg.load_state_dict_path:
        loading.existing_state_dict(cfg.load_state_dict_path, "load_state_dict_path")
    environment.pick_device(cfg.device)
    environment.check_wandb(cfg)


def save_checkpoints(names, model, tokenizer, checkpoint_dir):
    """Write the current model under each name in `names`, each folder swapped in atomically.

    The model is serialised once; the other folders get hard links to those files (a copy where
    links are not possible), which saves minutes and gigabytes for big models.
    """
    first, *others = names
    with files.atomic_dir(checkpoint_dir / first) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files.save_tensors(model.state_dict(), tmp / "state_dict.pt")
    for name in others:
        with files.atomic_dir(checkpoint_dir / name) as tmp:
            shutil.copytree(checkpoint_dir / first, tmp, copy_function=link_or_copy, dirs_exist_ok=True)


def link_or_copy(src, dst):
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def best_report(tracker, checkpoint_dir):
    return {name: dict(record, path=str(checkpoint_dir / name)) for name, record in tracker.best.items()}


class Trainer:
    """QA pre-tuning on subroutines.qa_tuning_loop: validation every `val_steps` steps keeps
    checkpoints of the best validations and stops early on validation NLL."""

    def __init__(self, cfg, model, tokenizer, train_examples, val_examples, device, run_dir, logger=None):
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.train_examples = train_examples
        self.val_examples = val_examples
        self.device = device
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.logger = logger
        self.collator = QACollator.from_config(tokenizer, cfg.dataset, models=[model])
        self.optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
        self.tracker = BestTracker()
        self.stopper = EarlyStopping(cfg.stop_k)
        self.history = []
        self.step = 0
        self.start_time = time.time()

    def save_state(self):
        """Everything a continuation needs, as of the validation just done, in one atomic file."""
        state = dict(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            step=self.step,
            best=self.tracker.best,
            stopper=vars(self.stopper),
            history=self.history,
            rng=environment.rng_state(),
        )
        files.atomic_torch_save(state, self.run_dir / RESUME_STATE)

    def load_state(self):
        """Continue from resume.pt; returns the step it was saved at."""
        state = files.load_tensors(
            self.run_dir / RESUME_STATE,
            "QA-tuning resume state",
            keys=("model", "optimizer", "step", "best", "stopper", "history", "rng"),
            fix="delete it to start the tuning afresh, or pass overwrite=true",
        )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tracker.best = state["best"]
        vars(self.stopper).update(state["stopper"])
        self.history = state["history"]
        self.step = state["step"]
        environment.restore_rng_state(state["rng"])
        self.start_time -= self.history[-1]["elapsed_s"]
        return self.step

    def validate(self, step, epoch, train_loss):
        """Score the validation set (greedy, as the reference), keep checkpoints it improves, log it;
        True means stop early."""
        self.step = step
        _, summary = evaluate_qa(
            self.model,
            self.tokenizer,
            self.val_examples,
            self.collator,
            self.device,
            eval_modes=VAL_MODES,
            batch_size=self.cfg.eval_batch_size,
            decoding=Decoding(method="greedy", max_new_tokens=self.cfg.max_new_tokens),
            desc=f"validate@{step}",
        )
        row = dict(
            step=step,
            epoch=epoch,
            train_loss=train_loss,
            val_nll=summary["nll"],
            val_em=summary["em"],
            val_f1=summary["f1"],
            val_questions=summary["n_questions"],
            elapsed_s=round(time.time() - self.start_time, 1),
        )
        improved = self.tracker.update(summary, step, epoch)
        if improved:
            save_checkpoints(improved, self.model, self.tokenizer, self.checkpoint_dir)
            files.atomic_write_text(
                json.dumps(best_report(self.tracker, self.checkpoint_dir), indent=2) + "\n", self.run_dir / "best.json"
            )
        if self.logger:
            self.logger.log({k: v for k, v in row.items() if v is not None}, step=step)
        self.history.append(row)
        stop = self.stopper.update(summary["nll"])
        if self.cfg.save_resume_state:
            self.save_state()
        # rewritten whole, after the resume state: the log never holds a validation a continuation repeats
        files.atomic_write_text("".join(json.dumps(r) + "\n" for r in self.history), self.run_dir / "metrics.jsonl")
        tqdm.write(
            f"step {step}: val nll {row['val_nll']:.4f} em {row['val_em']:.3f} f1 {row['val_f1']:.3f}"
            + (f"  (new {', '.join(improved)})" if improved else "")
        )
        return stop

    def train(self, start_step=0):
        cfg = self.cfg
        qa_tuning_loop(
            self.model,
            self.collator,
            self.train_examples,
            self.device,
            self.optimizer,
            self.validate,
            batch_size=cfg.batch_size,
            grad_acc_steps=cfg.grad_acc_steps,
            grad_clip_thresh=cfg.grad_clip_thresh,
            val_steps=cfg.val_steps,
            max_steps=cfg.max_steps,
            max_epochs=cfg.n_epochs,
            seed=cfg.seed,
            desc="QA tuning",
            start_step=start_step,
        )
        return self.history


def load_inputs(cfg, device, dtype):
    """Data, tokenizer and model, each failing with one line (UsageError) when it cannot be had."""
    train_examples = load_split(cfg.dataset, "qa_train")
    val_examples = question_sample(load_split(cfg.dataset, "qa_val"), cfg.max_val_questions, cfg.seed)
    model = loading.load_causal_lm(cfg.model, cfg.load_state_dict_path, torch_dtype=dtype)
    tokenizer = loading.load_tokenizer(cfg.tokenizer_name or cfg.model)
    vocab_size = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab_size:
        raise errors.UsageError(
            f"tokenizer {cfg.tokenizer_name or cfg.model} has {len(tokenizer)} tokens but the "
            f"model embeds only {vocab_size}; set tokenizer_name to the model's own tokenizer"
        )
    if cfg.grad_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise errors.UsageError(
                f"{type(model).__name__} does not support gradient checkpointing; set grad_checkpointing=false"
            )
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return train_examples, val_examples, tokenizer, model.to(device)


def check_folder(cfg, run_dir):
    """Refuse a folder holding a run with other options, before anything is loaded."""
    RUN_FOLDER.check(run_dir, cfg)


def train_qa(cfg: DictConfig, run_dir):
    """Run QA pre-tuning as configured, writing into `run_dir`; returns the metric rows. The same
    command into the same folder continues an interrupted run from its last validation, or finds it
    done; other options are refused (overwrite=true replaces the run)."""
    check_config(cfg)
    run_dir = Path(run_dir)
    check_folder(cfg, run_dir)
    tiny_world.ensure_built_for(cfg)
    if not cfg.overwrite and (run_dir / DONE).is_file():
        history = files.read_json(
            run_dir / DONE,
            "the completion record",
            "delete it to run the tuning again, or pass overwrite=true",
            keys=("history",),
        )["history"]
        print(f"QA tuning in {run_dir} is complete ({history[-1]['step']} steps); nothing to do")
        return history
    device = environment.pick_device(cfg.device)
    dtype = environment.pick_dtype(cfg.dtype)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    environment.set_seed(cfg.seed)
    train_examples, val_examples, tokenizer, model = load_inputs(cfg, device, dtype)
    RUN_FOLDER.claim(run_dir, cfg)  # the inputs loaded: the folder becomes this run's
    print(
        f"QA tuning {cfg.model} on {cfg.dataset.name}: {len(train_examples)} training and "
        f"{len(val_examples)} validation questions, device {device}; output in {run_dir}"
    )
    logger = environment.start_wandb(cfg, run_dir)
    trainer = Trainer(cfg, model, tokenizer, train_examples, val_examples, device, run_dir, logger)
    start_step = 0
    if (run_dir / RESUME_STATE).is_file():
        start_step = trainer.load_state()
        print(f"continuing the interrupted run from its validation at step {start_step}")
    history = trainer.train(start_step)
    if logger:
        logger.finish()
    (run_dir / RESUME_STATE).unlink(missing_ok=True)
    files.atomic_write_text(
        json.dumps(dict(history=history, best=best_report(trainer.tracker, trainer.checkpoint_dir)), indent=2) + "\n",
        run_dir / DONE,
    )
    first, last = history[0], history[-1]
    print(
        f"validation before: nll {first['val_nll']:.4f} em {first['val_em']:.3f} f1 {first['val_f1']:.3f}; "
        f"after {last['step']} steps: nll {last['val_nll']:.4f} em {last['val_em']:.3f} f1 {last['val_f1']:.3f}"
    )
    for name, record in best_report(trainer.tracker, trainer.checkpoint_dir).items():
        print(f"{name}: {record['path']} ({record['metric']}={record['value']:.4f} at step {record['step']})")
    return history


@hydra.main(version_base=None, config_path="qa_conf", config_name="config")
def main(cfg: DictConfig):
    checks.run_job(train_qa, cfg)


checks.register(checks.QA_TUNE, check_config, check_folder)


if __name__ == "__main__":
    errors.run_cli(main)
