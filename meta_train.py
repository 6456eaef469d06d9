"""The CaMeLS meta-training loop, `python run.py task=train model=CaMeLS` (MetaTrainer).

The loop over batches accumulates the meta-gradient of meta_objective.outer_loss into the weight
model, steps Adam, carries and resets the base model, validates, checkpoints and resumes.
"""

import dataclasses
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import subroutines
from exp_datasets import QACollator, group_shuffle, load_split, load_web_text
from exp_datasets.answer_spans import make_batch
from meta_objective import MetaSettings, accumulate_meta_gradient, check_meta_options, outer_loss
from plumbing import distributed, environment, files, loading, run_folder, schemas
from plumbing.errors import UsageError
from weight_analysis import answer_mass, render_document_weights

RESUME_FILE = "trainer_state.pt"
RUN_FOLDER = run_folder.RunProtocol(
    outputs=("metrics.jsonl", "summary.json", "checkpoints", "samples", "config.yaml", "config_resumed_at_step_*.yaml"),
    resumable=(
        *run_folder.RUNTIME_OPTIONS,
        "max_outer_steps",
        "n_epochs",
        "output_dir",
        "resume_from",
        "dist_timeout_min",
    ),
    state=f"checkpoints/last/{RESUME_FILE}",
)


def batched(items, size):
    """Consecutive batches of `size`; the last may be smaller (as a DataLoader without drop_last)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def epoch_order(examples, batch_order, rng):
    """One epoch's order of the training rows. rows: a shuffle of all rows (the reference's shuffled
    DataLoader), so a batch holds mostly distinct documents; documents: documents in shuffled order,
    each document's rows together."""
    if batch_order == "rows":
        return rng.sample(examples, len(examples))
    return group_shuffle(examples, example_group, rng)


# ---------------------------------------------------------------------------------------------
# The training loop


def check_config(cfg) -> None:
    """Every problem the user can fix, found before any work is done: the ranges and choices of the
    schema (schemas.TrainConfig), then what it cannot say (registries, files, options that go together)."""
    from weight_model import check_learned

    check_learned(cfg)
    schemas.check_values(cfg)
    loading.base_state_dict(cfg)
    if cfg.reset_base_freq % cfg.update_batch_size:
        raise UsageError(
            f"reset_base_freq={cfg.reset_base_freq} must be a multiple of update_batch_size={cfg.update_batch_size}"
        )
    distributed.check_grad_acc_steps(cfg.grad_acc_steps)
    check_meta_options(cfg)
    if cfg.web_text_loc and not web_text_path(cfg):
        raise UsageError(
            "web_text_loc=true needs web_text_csv=/path/to/openwebtext.csv "
            f"(dataset={cfg.dataset.name} names none), or set web_text_loc=false"
        )
    environment.pick_device(cfg.device)
    for option in ("output_dir", "resume_from"):
        if cfg.get(option):
            files.check_folder_path(cfg[option], option)
    if cfg.resume_from:
        files.recover_dir(Path(cfg.resume_from) / "checkpoints" / "last")
    if cfg.resume_from and not (Path(cfg.resume_from) / "checkpoints" / "last" / RESUME_FILE).is_file():
        raise UsageError(
            f"resume_from={cfg.resume_from} holds no checkpoints/last/{RESUME_FILE}; "
            "point it at the folder of a task=train run that validated at least once"
        )
    environment.check_wandb(cfg)


def web_text_path(cfg) -> str:
    return cfg.get("web_text_csv") or cfg.dataset.get("web_text_csv")


def output_dir(cfg) -> Path:
    if cfg.resume_from:
        return Path(cfg.resume_from)
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise UsageError("output_dir is not set; pass output_dir=/some/folder or run through run.py")


class MetaTrainer:
    """State of a meta-training run: the base model (carried across batches, reset on schedule),
    its starting weights, the weight model and its optimiser, data and logs."""

    def __init__(
        self,
        cfg,
        base_model,
        weight_model,
        tokenizer,
        train_examples,
        val_examples,
        web_texts,
        out_dir,
        device,
        val_web_texts=None,
    ):
        self.cfg = cfg
        self.base_model = base_model
        self.weight_model = weight_model
        self.tokenizer = tokenizer
        self.device = device
        self.out_dir = Path(out_dir)
        self.collator = QACollator.from_config(tokenizer, cfg.dataset, models=[base_model, weight_model])
        self.settings = dataclasses.replace(MetaSettings.from_config(cfg), max_text_len=self.collator.max_text_len)
        self.start_state = subroutines.snapshot_parameters(base_model)
        self.trainable = [p for p in weight_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.trainable, lr=float(cfg.outer_lr))
        self.train_examples = train_examples
        # one fixed order of the validation rows, drawn as a training epoch's
        self.val_batches = batched(
            epoch_order(val_examples, cfg.batch_order, random.Random(cfg.seed)), cfg.update_batch_size
        )[: cfg.val_batches]
        if min(len(train_examples), len(val_examples)) < cfg.update_batch_size:
            raise UsageError(
                f"the train and val splits need at least update_batch_size={cfg.update_batch_size} "
                f"examples each (have {len(train_examples)} and {len(val_examples)})"
            )
        self.web_texts = web_texts
        self.val_web_texts = web_texts if val_web_texts is None else val_web_texts
        self.loc_rng = random.Random(cfg.seed + 1)
        self.shuffle_rng = random.Random(cfg.seed)
        self.docs_since_reset = 0
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch already trained on
        self.epoch_rng_state = None  # the shuffle generator's state before the current epoch's shuffle
        self.val_start = None
        self.best_val = math.inf
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.wandb_run = None

    # -- base model state ---------------------------------------------------------------------
    def reset_base(self):
        subroutines.restore_parameters(self.base_model, self.start_state)
        self.docs_since_reset = 0

    def advance_base(self, updated, n_docs):
        """Carry the updated weights to the next batch; back to the start every reset_base_freq docs."""
        subroutines.restore_parameters(self.base_model, updated)
        self.docs_since_reset += n_docs
        if self.docs_since_reset >= self.cfg.reset_base_freq:
            self.reset_base()

    # -- one batch ----------------------------------------------------------------------------
    def loc_batches(self, rng, web_texts=None):
        web_texts = self.web_texts if web_texts is None else web_texts
        if not web_texts:
            return {}
        texts = rng.sample(web_texts, min(self.cfg.loc_batch_size, len(web_texts)))
        ids, mask = self.collator.encode_texts(texts)
        return {"web_text": (ids.to(self.device), mask.to(self.device))}

    def train_batch(self, examples):
        """Forward and backward of one batch (gradients accumulate in the weight model)."""
        batch = make_batch(self.collator, examples, self.device)
        weights, metrics, updated = accumulate_meta_gradient(
            self.weight_model,
            self.base_model,
            batch,
            self.loc_batches(self.loc_rng),
            self.settings,
            scale=1.0 / self.cfg.grad_acc_steps,
        )
        self.advance_base(updated, len(examples))
        metrics["weight_mean"] = (weights.detach() * batch["text_mask"]).sum().item() / batch["text_mask"].sum().item()
        mass = answer_mass(weights, batch)
        if mass:
            metrics["answer_weight_share"] = mass[0] / max(mass[1], 1e-30)
        return metrics

    def skip_batch(self):
        """Another rank's micro-batch: its web texts are drawn all the same (one process's generator)."""
        self.loc_batches(self.loc_rng)

    @torch.no_grad()
    def batch_weights(self, batch):
        return self.weight_model(batch["text_ids"], batch["text_mask"])

    def validate(self):
        """The training procedure on the validation batches without second-order gradients, from
        the starting base weights; the training base-model state is restored afterwards."""
        training_state, docs_since_reset = subroutines.snapshot_parameters(self.base_model), self.docs_since_reset
        was_training = self.weight_model.training
        self.weight_model.eval()
        self.reset_base()
        loc_rng = random.Random(self.cfg.seed + 2)
        sums, mass = {}, [0.0, 0.0, 0, 0]
        for examples in tqdm(self.val_batches, desc="validation", leave=False, disable=not self.cfg.progress):
            batch = make_batch(self.collator, examples, self.device)
            weights = self.batch_weights(batch)
            _, metrics, updated = outer_loss(
                self.base_model,
                weights,
                batch,
                self.loc_batches(loc_rng, self.val_web_texts),
                self.settings,
                differentiable=False,
                diagnostics=True,
            )
            self.advance_base(updated, len(examples))
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            batch_mass = answer_mass(weights, batch)
            if batch_mass:
                mass = [a + b for a, b in zip(mass, batch_mass)]
        subroutines.restore_parameters(self.base_model, training_state)
        self.docs_since_reset = docs_since_reset
        self.weight_model.train(was_training)
        result = {key: value / len(self.val_batches) for key, value in sums.items()}
        result["total"] = result.pop("outer_loss")
        if mass[3]:
            result["answer_weight_share"] = mass[0] / max(mass[1], 1e-30)
            result["answer_token_share"] = mass[2] / mass[3]
        return result

    # -- outputs ------------------------------------------------------------------------------
    @distributed.main_only
    def log(self, row):
        row = {k: (round(v, 8) if isinstance(v, float) else v) for k, v in row.items()}
        files.append_line(files.strict_json(row), self.metrics_path)
        if self.wandb_run is not None:
            split = row["split"]
            self.wandb_run.log(
                {f"{split}/{k}": v for k, v in row.items() if k not in ("split", "step")}, step=row["step"]
            )

    @distributed.main_only
    def save_checkpoint(self, name, info):
        with files.atomic_dir(self.out_dir / "checkpoints" / name) as folder:
            self.weight_model.save(folder)
            (folder / "training_state.json").write_text(json.dumps(info, indent=1))

    def sample_documents(self):
        """The first `sample_docs` distinct documents of the validation batches, each with all of
        its questions (the fixed sample whose weights are rendered during training)."""
        questions = {}
        for example in (e for batch in self.val_batches for e in batch):
            if example.text in questions or len(questions) < self.cfg.sample_docs:
                questions.setdefault(example.text, []).append(example)
        return list(questions.values())

    @distributed.main_only
    def render_samples(self):
        was_training = self.weight_model.training
        self.weight_model.eval()
        render_document_weights(
            self.tokenizer,
            self.collator,
            self.sample_documents(),
            self.batch_weights,
            self.device,
            self.out_dir / "samples" / f"step_{self.step:06d}",
            heading=f"CaMeLS weights after {self.step} outer steps",
        )
        self.weight_model.train(was_training)

    @distributed.main_only
    def run_validation(self, started):
        metrics = self.validate()
        self.check_finite(f"the validation outer loss after {self.step} outer steps", metrics["total"])
        improved = metrics["total"] < self.best_val
        self.log(dict(split="val", step=self.step, epoch=self.epoch, elapsed_s=time.time() - started, **metrics))
        if improved:
            self.best_val = metrics["total"]
            self.save_checkpoint("best", dict(step=self.step, epoch=self.epoch, val=metrics))
        return metrics

    def check_finite(self, what, value):
        """Stop at the first non-finite number, before it reaches the weights or a checkpoint."""
        if math.isfinite(value):
            return
        folder = self.out_dir / "checkpoints"
        saved = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
        kept = (
            f"the checkpoints saved before it are kept: {', '.join(saved)} in {folder}"
            if saved
            else "no checkpoint was saved"
        )
        raise UsageError(
            f"meta-training diverged: {what} is {value} ({kept}); the learning rates are likely too "
            f"large: lower inner_lr={self.cfg.inner_lr} or outer_lr={self.cfg.outer_lr}"
        )

    # -- resuming -----------------------------------------------------------------------------
    def save_last(self, val):
        """checkpoints/last/: the weight model, plus everything needed to continue the run from
        this optimiser step exactly (taken only between optimiser steps, with no pending gradients)."""
        own = dict(
            base_params=subroutines.snapshot_parameters(self.base_model, "cpu"),
            docs_since_reset=self.docs_since_reset,
            rng=environment.rng_state(),
        )
        ranks = distributed.all_gather_objects(own)  # under torchrun each rank carries its own base model
        if not distributed.is_main():
            return
        state = dict(
            step=self.step,
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            epoch_rng_state=self.epoch_rng_state,
            loc_rng_state=self.loc_rng.getstate(),
            best_val=self.best_val,
            val_start=self.val_start,
            optimizer=self.optimizer.state_dict(),
            **own,
            ranks=ranks if len(ranks) > 1 else None,
        )
        with files.atomic_dir(self.out_dir / "checkpoints" / "last") as folder:
            self.weight_model.save(folder)
            (folder / "training_state.json").write_text(
                json.dumps(dict(step=self.step, epoch=self.epoch, val=val), indent=1)
            )
            files.save_tensors(state, folder / RESUME_FILE)

    def resume(self, folder):
        from weight_model import load_weight_model

        state = files.load_tensors(
            Path(folder) / RESUME_FILE,
            "meta-training state",
            keys=(
                "optimizer",
                "base_params",
                "step",
                "epoch",
                "batch_in_epoch",
                "epoch_rng_state",
                "docs_since_reset",
                "best_val",
                "val_start",
                "loc_rng_state",
                "rng",
            ),
            fix="delete the folder checkpoints/last to start afresh, or pass overwrite=true",
        )
        self.weight_model.load_state_dict(load_weight_model(folder).state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        subroutines.restore_parameters(self.base_model, state["base_params"])
        for key in ("step", "epoch", "batch_in_epoch", "epoch_rng_state", "docs_since_reset", "best_val", "val_start"):
            setattr(self, key, state[key])
        self.loc_rng.setstate(state["loc_rng_state"])
        environment.restore_rng_state(state["rng"])
        own = distributed.own_state(state.get("ranks"), self.cfg.resume_from)
        if own:
            subroutines.restore_parameters(self.base_model, own["base_params"])
            self.docs_since_reset = own["docs_since_reset"]
            environment.restore_rng_state(own["rng"])
        self.truncate_metrics()

    @distributed.main_only
    def truncate_metrics(self):
        """metrics.jsonl up to the resumed step: rows logged after the checkpoint by the interrupted
        run are logged again by the continuation, so they go, and so does a last line cut short by a full disk."""
        if not self.metrics_path.is_file():
            return
        rows = [
            line if line.endswith("\n") else line + "\n"
            for line in self.metrics_path.read_text().splitlines(keepends=True)
            if complete_row(line, self.step)
        ]
        files.atomic_write_text("".join(rows), self.metrics_path)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self):
        cfg = self.cfg
        batches_per_epoch = len(batched(self.train_examples, cfg.update_batch_size))
        total_steps = cfg.n_epochs * math.ceil(batches_per_epoch / cfg.grad_acc_steps)
        if cfg.max_outer_steps is not None:
            total_steps = min(total_steps, int(cfg.max_outer_steps))
        started = time.time()
        resuming = self.val_start is not None
        if not resuming:
            self.val_start = self.run_validation(started)
            self.render_samples()
        last_val = self.val_start
        progress = tqdm(
            total=total_steps,
            initial=self.step,
            desc="meta-train",
            disable=not cfg.progress or not distributed.is_main(),
        )
        self.weight_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        window, accumulated, step_started = [], 0, time.time()

        def optimizer_step(epoch):
            """Sum the ranks' gradients, clip, step Adam, log, validate and render on schedule."""
            nonlocal window, accumulated, step_started, last_val
            distributed.sum_gradients(self.trainable)
            window = [m for rank_window in distributed.all_gather_objects(window) for m in rank_window]
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, float(cfg.grad_clip_thresh))
            self.check_finite(f"the weight model's gradient norm at outer step {self.step + 1}", grad_norm.item())
            self.optimizer.step()
            self.check_finite(
                f"a weight-model parameter after outer step {self.step + 1}",
                0.0 if all(torch.isfinite(p).all() for p in self.trainable) else math.nan,
            )
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            means = {
                k: sum(m[k] for m in window if k in m) / sum(k in m for m in window)
                for k in dict.fromkeys(k for m in window for k in m)
            }
            row = dict(
                split="train",
                step=self.step,
                epoch=epoch,
                **means,
                grad_norm=grad_norm.item(),
                step_s=time.time() - step_started,
                elapsed_s=time.time() - started,
            )
            self.log(row)
            progress.update(1)
            if last_val is not None:
                progress.set_postfix(outer=f"{row['outer_loss']:.4f}", val=f"{last_val['total']:.4f}")
            window, accumulated, step_started = [], 0, time.time()
            if self.step % cfg.val_steps == 0:
                last_val = self.run_validation(started)
                self.save_last(last_val)
            if self.step % cfg.sample_steps == 0:
                self.render_samples()

        for epoch in range(max(self.epoch, 1), cfg.n_epochs + 1):
            if self.step >= total_steps:
                break
            if not (resuming and epoch == self.epoch and self.batch_in_epoch):
                self.epoch, self.batch_in_epoch = epoch, 0
                self.epoch_rng_state = self.shuffle_rng.getstate()
                self.reset_base()
            # the same generator state gives the same order, also when a resumed run re-enters an epoch
            self.shuffle_rng.setstate(self.epoch_rng_state)
            batches = batched(
                epoch_order(self.train_examples, cfg.batch_order, self.shuffle_rng), cfg.update_batch_size
            )
            for index, examples in enumerate(batches):
                if index < self.batch_in_epoch:
                    continue
                if self.step >= total_steps:
                    break
                if distributed.owns(accumulated, cfg.grad_acc_steps):
                    window.append(self.train_batch(examples))
                    self.check_finite(f"the outer loss at outer step {self.step + 1}", window[-1]["outer_loss"])
                else:
                    self.skip_batch()
                self.batch_in_epoch = index + 1
                accumulated += 1
                # the epoch's last batches step even when fewer than grad_acc_steps (as the reference
                # steps at each epoch end), so no gradient crosses into the next epoch
                if accumulated == cfg.grad_acc_steps or self.batch_in_epoch == len(batches):
                    optimizer_step(epoch)
            # an epoch is complete when all its batches were used, or at the natural end of training
            # (not a max_outer_steps cap)
            capped = cfg.max_outer_steps is not None and self.step >= int(cfg.max_outer_steps)
            if cfg.save_epoch_checkpoints and (self.batch_in_epoch == len(batches) or not capped):
                self.save_checkpoint(f"epoch_{epoch}", dict(step=self.step, epoch=epoch))
        progress.close()
        if self.step % cfg.val_steps or (resuming and last_val is self.val_start):
            last_val = self.run_validation(started)
        self.render_samples()
        self.save_last(last_val)
        summary = dict(
            steps=self.step,
            epochs=self.epoch,
            wall_s=time.time() - started,
            val_start=self.val_start,
            val_end=last_val,
            best_val_total=self.best_val,
            output_dir=str(self.out_dir),
        )
        if distributed.is_main():
            files.atomic_write_text(files.strict_json(summary, indent=1), self.out_dir / "summary.json")
        return summary


def check_folder(cfg, run_dir) -> None:
    """Refuse a run folder holding a meta-training run with other options (output_dir and resume_from
    name their own folder, checked when the run claims it)."""
    if not cfg.resume_from and not cfg.get("output_dir"):
        RUN_FOLDER.check(run_dir, cfg)


def claim_run_folder(cfg, out_dir):
    """ "complete" when `out_dir` holds this very run finished, True when it holds it unfinished
    (resume), False for a fresh start; a run with other options there is refused (run_folder.claim)."""
    from omegaconf import OmegaConf

    if cfg.resume_from and cfg.get("overwrite"):
        raise UsageError("resume_from and overwrite=true contradict each other; give one")
    options = RUN_FOLDER.options(cfg)
    if cfg.resume_from and run_folder.recorded_options(out_dir) is None and (out_dir / "config.yaml").is_file():
        # a run from before options were recorded: its config.yaml holds them
        recorded = run_folder.flatten(OmegaConf.to_container(OmegaConf.load(out_dir / "config.yaml")))
        files.atomic_write_text(json.dumps(recorded), out_dir / run_folder.OPTIONS_FILE)
    files.recover_dir(out_dir / "checkpoints" / "last")
    old = RUN_FOLDER.claim(out_dir, cfg)
    if old is None:
        return False
    same_end = all(old.get(k) == options.get(k) for k in ("max_outer_steps", "n_epochs"))
    if same_end and (out_dir / "summary.json").is_file():
        return "complete"
    if (out_dir / RUN_FOLDER.state).is_file():
        return True
    RUN_FOLDER.remove_outputs(out_dir)  # stopped before its first checkpoint: start again
    return False


def complete_row(line, last_step):
    """Whether a line of metrics.jsonl is a whole row logged at or before `last_step`."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step


def example_group(example):
    return example.group or example.doc_id


def train(cfg) -> dict:
    """Meta-train a weight model as configured by run.py's task=train (on each torchrun rank); returns the summary."""
    from omegaconf import OmegaConf

    from weight_model import build_weight_model

    check_config(cfg)
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    device = distributed.init(environment.pick_device(cfg.device), cfg.dist_timeout_min)
    dtype = environment.pick_dtype(cfg.dtype)
    out_dir = distributed.broadcast_object(output_dir(cfg))  # rank 0's folder, claimed by rank 0
    resume = distributed.broadcast_object(claim_run_folder(cfg, out_dir) if distributed.is_main() else None)
    if resume == "complete":
        summary = files.read_json(
            out_dir / "summary.json",
            "the meta-training summary",
            "delete it to run the training again, or pass overwrite=true",
            keys=("steps",),
        )
        if distributed.is_main():
            print(f"meta-training in {out_dir} is already complete ({summary['steps']} outer steps); nothing to do")
        return summary
    environment.set_seed(cfg.seed)
    train_examples = load_split(cfg.dataset, "train")
    val_examples = load_split(cfg.dataset, "val")
    web_texts = load_web_text(web_text_path(cfg)) if cfg.web_text_loc else []
    val_web_texts = load_web_text(cfg.web_text_val_csv) if cfg.web_text_loc and cfg.web_text_val_csv else None
    tokenizer = loading.load_tokenizer(cfg.tokenizer_name or cfg.base_model)
    # second-order gradients through SDPA attention are not implemented on every device
    base_model = loading.load_causal_lm(
        cfg.base_model, loading.base_state_dict(cfg), attn_implementation="eager", torch_dtype=dtype
    ).to(device)
    # dropout as the reference: on in the inner loop and for the "before" logits (meta_objective
    # switches it off for the losses after the update); meta_dropout=false: off throughout
    base_model.train(bool(cfg.meta_dropout))
    weight_model = build_weight_model(cfg.model, tokenizer).to(device=device, dtype=dtype)
    distributed.broadcast_parameters(weight_model.parameters())
    if distributed.rank():  # each rank its own dropout masks and forward-mode probes; rank 0 draws one process's
        torch.manual_seed(cfg.seed + distributed.rank())
    trainer = MetaTrainer(
        cfg,
        base_model,
        weight_model,
        tokenizer,
        train_examples,
        val_examples,
        web_texts,
        out_dir,
        device,
        val_web_texts,
    )
    if resume:
        trainer.resume(out_dir / "checkpoints" / "last")
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        config_name = f"config_resumed_at_step_{trainer.step}.yaml" if resume else "config.yaml"
        files.atomic_write_text(OmegaConf.to_yaml(cfg, resolve=True), out_dir / config_name)
    if distributed.is_main():
        trainer.wandb_run = environment.start_wandb(cfg, out_dir)
    try:
        summary = trainer.fit()
    finally:
        if trainer.wandb_run is not None:
            trainer.wandb_run.finish()
    if not distributed.is_main():
        return summary
    val_start, val_end = summary["val_start"], summary["val_end"]
    print(
        f"meta-training: {summary['steps']} outer steps in {summary['wall_s']:.0f}s; validation outer loss "
        f"{val_start['total']:.4f} -> {val_end['total']:.4f}; checkpoints in {out_dir / 'checkpoints'}"
    )
    return summary
