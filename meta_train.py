"""CaMeLS meta-training (SPEC §5), `python run.py task=train model=CaMeLS`.

The weight model gives each document token a weight; a copy of the base model takes differentiable
SGD steps on the weighted document loss; the outer loss (answer NLL on the batch's questions after
the steps, plus `c_kl` x KL on unrelated web text) is backpropagated through those steps into the
weight model, which Adam updates.
"""
import html
import json
import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils.checkpoint
from tqdm.auto import tqdm

import util
from exp_datasets import QACollator, group_shuffle, load_split, load_web_text
from util import UsageError, answer_nll, kl_locality, weighted_lm_loss

INNER_BACKENDS = ("higher", "torch_func")
RESUME_FILE = "trainer_state.pt"


# ---------------------------------------------------------------------------------------------
# The meta-objective of one batch


@dataclass(frozen=True)
class MetaSettings:
    """What defines the outer loss of a batch; see conf/task/train.yaml for each knob."""

    inner_lr: float
    num_inner_steps: int = 1
    sequential_update: bool = True
    max_text_len: int = 1024
    c_kl: float = 0.1
    c_norm: float = 0.0
    backend: str = "higher"
    grad_checkpointing: bool = False

    @classmethod
    def from_config(cls, cfg):
        return cls(inner_lr=float(cfg.inner_lr), num_inner_steps=int(cfg.num_inner_steps),
                   sequential_update=bool(cfg.sequential_update), max_text_len=int(cfg.dataset.max_text_len),
                   c_kl=float(cfg.c_kl), c_norm=float(cfg.c_norm), backend=str(cfg.inner_backend),
                   grad_checkpointing=bool(cfg.grad_checkpointing))


def inner_batches(text_ids, text_mask, weights, settings):
    """(ids, mask, weights) of each inner SGD step, in order: per pass (`num_inner_steps`), one step
    per document (cut to its own length, so padding costs nothing) or one step on the whole batch."""
    lengths = text_mask.sum(1).tolist()
    for _ in range(settings.num_inner_steps):
        if settings.sequential_update:
            for row, length in enumerate(lengths):
                yield text_ids[row:row + 1, :length], text_mask[row:row + 1, :length], weights[row:row + 1, :length]
        else:
            yield text_ids, text_mask, weights


@dataclass
class AdaptedModel:
    """The base model after the inner loop: `logits(input_ids, attention_mask)` runs it with the
    updated weights; `params` are those weights, in the order of base_model.parameters()."""

    logits: object
    params: list


def lm_call(model, input_ids, attention_mask, **kwargs):
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits


@contextmanager
def inner_loop(base_model, text_ids, text_mask, weights, settings, differentiable=True):
    """Run the inner SGD steps on a copy of `base_model` whose initial weights get no gradient.

    differentiable=True keeps the graph of every step (second-order gradients reach `weights`);
    False takes plain first-order steps (validation).
    """
    steps = inner_batches(text_ids, text_mask, weights, settings)
    if settings.backend == "higher":
        import higher

        inner_opt = torch.optim.SGD(base_model.parameters(), lr=settings.inner_lr)
        with higher.innerloop_ctx(base_model, inner_opt, copy_initial_weights=True,
                                  track_higher_grads=differentiable) as (fmodel, diffopt):
            for ids, mask, w in steps:
                diffopt.step(weighted_lm_loss(lm_call(fmodel, ids, mask), ids, mask, w, settings.max_text_len))
            yield AdaptedModel(lambda ids, mask: lm_call(fmodel, ids, mask), list(fmodel.fast_params))
    elif settings.backend == "torch_func":
        names = [name for name, _ in base_model.named_parameters()]
        trainable = [p.requires_grad for p in base_model.parameters()]
        params = [p.detach().requires_grad_(t) for p, t in zip(base_model.parameters(), trainable)]

        def run(ids, mask, *current):
            return lm_call(lambda **kw: torch.func.functional_call(base_model, dict(zip(names, current)), (), kw),
                           ids, mask)

        def logits(current, ids, mask):
            if settings.grad_checkpointing:
                # the weights are inputs of the checkpointed call, so the recomputation in the
                # backward pass uses the same fast weights (transformers' own checkpointing would
                # recompute with the module's stored weights)
                return torch.utils.checkpoint.checkpoint(run, ids, mask, *current, use_reentrant=False)
            return run(ids, mask, *current)

        for ids, mask, w in steps:
            loss = weighted_lm_loss(logits(params, ids, mask), ids, mask, w, settings.max_text_len)
            targets = [p for p, t in zip(params, trainable) if t]
            grads = iter(torch.autograd.grad(loss, targets, create_graph=differentiable, allow_unused=True))
            updated = []
            for p, t in zip(params, trainable):
                grad = next(grads) if t else None
                step = p if grad is None else p - settings.inner_lr * grad
                updated.append(step if differentiable or not t else step.detach().requires_grad_())
            params = updated
        yield AdaptedModel(lambda ids, mask: logits(params, ids, mask), params)
    else:
        raise UsageError(f"inner_backend={settings.backend} is unknown; use one of {', '.join(INNER_BACKENDS)}")


def text_nll(logits, text_ids, text_mask):
    """Plain mean next-token NLL over the real tokens of documents (the unweighted document loss)."""
    return answer_nll(logits, text_ids.masked_fill(text_mask == 0, -100))


def weight_norm_penalty(weights, text_mask):
    """Root mean square of the weights over real tokens."""
    mask = text_mask.to(weights.dtype)
    return ((weights * mask).pow(2).sum() / mask.sum().clamp(min=1)).sqrt()


def outer_loss(base_model, weights, batch, loc_batches, settings, differentiable=True, diagnostics=False):
    """The meta-objective of one batch, given its per-token weights.

    Returns (loss, metrics, updated_params): loss = answer NLL after the inner update
    + c_kl x mean KL(before || after) over the locality sets (+ c_norm x weight-norm penalty);
    metrics are floats; updated_params (detached) are the base weights after the update.
    diagnostics=True also measures the document loss before and after the update.
    """
    with torch.no_grad():
        qa_before = answer_nll(lm_call(base_model, batch["qa_ids"], batch["qa_mask"]), batch["qa_labels"])
        loc_before = {name: lm_call(base_model, ids, mask) for name, (ids, mask) in loc_batches.items()}
        text_before = (text_nll(lm_call(base_model, batch["text_ids"], batch["text_mask"]), batch["text_ids"],
                                batch["text_mask"]) if diagnostics else None)
    with inner_loop(base_model, batch["text_ids"], batch["text_mask"], weights, settings, differentiable) as adapted:
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            qa_after = answer_nll(adapted.logits(batch["qa_ids"], batch["qa_mask"]), batch["qa_labels"])
            loss = qa_after
            with torch.set_grad_enabled(torch.is_grad_enabled() and settings.c_kl != 0):
                kls = {name: kl_locality(loc_before[name], adapted.logits(ids, mask), mask)
                       for name, (ids, mask) in loc_batches.items()}
            if kls and settings.c_kl != 0:
                loss = loss + settings.c_kl * sum(kls.values()) / len(kls)
            if settings.c_norm != 0:
                loss = loss + settings.c_norm * weight_norm_penalty(weights, batch["text_mask"])
        metrics = dict(outer_loss=loss.item(), qa_loss=qa_after.item(), qa_before=qa_before.item(),
                       qa_gain=qa_before.item() - qa_after.item(),
                       **{f"kl_{name}": kl.item() for name, kl in kls.items()})
        if diagnostics:
            with torch.no_grad():
                text_after = text_nll(adapted.logits(batch["text_ids"], batch["text_mask"]), batch["text_ids"],
                                      batch["text_mask"])
            metrics.update(text_loss=text_after.item(), text_before=text_before.item(),
                           text_gain=text_before.item() - text_after.item())
        updated = [p.detach() for p in adapted.params]
    return loss, metrics, updated


# ---------------------------------------------------------------------------------------------
# Batches


def answer_token_mask(tokenizer, examples, max_text_len, width):
    """B x width bool: document tokens overlapping the answer's character span (Example.extra
    answer_start/answer_end), and B bool: whether the example has such a span. None when the
    tokenizer gives no offsets or no example has a span."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    has_span = torch.zeros(len(examples), dtype=torch.bool)
    for row, example in enumerate(examples):
        try:
            start, end = int(example.extra["answer_start"]), int(example.extra["answer_end"])
        except (KeyError, TypeError, ValueError):
            continue
        offsets = tokenizer(example.text, return_offsets_mapping=True)["offset_mapping"][:max_text_len]
        for position, (token_start, token_end) in enumerate(offsets):
            mask[row, position] = token_end > start and token_start < end
        has_span[row] = mask[row].any()
    return (mask, has_span) if has_span.any() else None


def make_batch(collator, examples, device):
    """Collated tensors of `examples` on `device`, plus `answer_mask`/`has_span` where available."""
    batch = collator(examples)
    tensors = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    spans = answer_token_mask(collator.tokenizer, examples, collator.max_text_len, batch["text_ids"].shape[1])
    if spans is not None:
        tensors["answer_mask"], tensors["has_span"] = (t.to(device) for t in spans)
    tensors["examples"] = examples
    return tensors


def document_batch(collator, groups, device):
    """A batch of whole documents, each given as the list of its Examples (collated by the first),
    whose `answer_mask` marks the tokens of any of the document's answers (absent when unknown)."""
    batch = make_batch(collator, [group[0] for group in groups], device)
    width = batch["text_ids"].shape[1]
    spans = [answer_token_mask(collator.tokenizer, group, collator.max_text_len, width) for group in groups]
    for key in ("answer_mask", "has_span"):  # make_batch's are the first question's only
        batch.pop(key, None)
    if all(span is not None for span in spans):
        batch["answer_mask"] = torch.stack([span[0].any(0) for span in spans]).to(device)
        batch["has_span"] = torch.stack([span[1].any() for span in spans]).to(device)
    return batch


def answer_mass(weights, batch):
    """(weight on answer tokens, weight on all tokens, answer tokens, tokens) over the batch's
    documents with an answer span, counting the positions whose weight enters the loss (1..T-1)."""
    if "answer_mask" not in batch:
        return None
    rows = batch["has_span"]
    real = batch["text_mask"][rows, 1:].bool()
    answer = batch["answer_mask"][rows, 1:] & real
    w = weights[rows, 1:].detach().double()
    return (w[answer].sum().item(), w[real].sum().item(), answer.sum().item(), real.sum().item())


def batched(items, size):
    """Consecutive full batches (a trailing partial batch is dropped so the base-model reset
    schedule, counted in documents, stays aligned with batch boundaries)."""
    return [items[i:i + size] for i in range(0, len(items) - size + 1, size)]


# ---------------------------------------------------------------------------------------------
# Rendering weights


def render_weights(tokenizer, input_ids, weights, path_html, path_png, attention_mask=None, highlight=None,
                   titles=None, heading="Token weights"):
    """Show per-token weights of documents: an HTML page with each token shaded by its weight
    (hover shows the value) and a PNG bar chart per document. `highlight` (B x T bool, optional)
    marks tokens to outline, e.g. answer tokens; `titles` names the documents."""
    from matplotlib.figure import Figure

    input_ids = torch.as_tensor(input_ids).cpu()
    weights = torch.as_tensor(weights).detach().cpu().double()
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else \
        torch.as_tensor(attention_mask).cpu().bool()
    docs = []
    for row in range(input_ids.shape[0]):
        positions = mask[row].nonzero().flatten().tolist()
        tokens = [tokenizer.decode([int(input_ids[row, p])]) for p in positions]
        values = [float(weights[row, p]) for p in positions]
        marked = [bool(highlight[row, p]) if highlight is not None else False for p in positions]
        title = titles[row] if titles else f"Document {row}"
        docs.append((title, tokens, values, marked))

    every = [v for _, _, values, _ in docs for v in values] or [0.0]
    low, high = min(every), max(every)
    # shade by the weight's place in this page's range, so that small differences stay visible
    spread = high - low if high - low > 1e-6 * max(abs(high), 1e-12) else None

    def shade(value):
        return 0.5 if spread is None else 0.1 + 0.8 * (value - low) / spread

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(heading)}</title><style>",
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}",
        ".doc{white-space:pre-wrap;line-height:1.9;border:1px solid #ccc;padding:.6em;margin-bottom:1.2em}",
        ".tok{border-radius:3px}.ans{outline:2px solid #1a5fb4}",
        "</style></head><body>",
        f"<h1>{html.escape(heading)}</h1>",
        f"<p>Shading: from the smallest weight on this page ({low:.4g}, lightest) to the largest ({high:.4g}, "
        f"darkest); hover a token for its weight.{' Outlined: answer tokens.' if highlight is not None else ''}</p>",
    ]
    for title, tokens, values, marked in docs:
        mean = sum(values) / max(len(values), 1)
        parts.append(f"<h2>{html.escape(str(title))}</h2>"
                     f"<p>mean weight {mean:.4g}, max {max(values, default=0):.4g}</p>")
        spans = [
            f"<span class='tok{' ans' if m else ''}' style='background:rgba(230,80,0,{shade(v):.3f})' "
            f"title='{v:.4g}'>{html.escape(t)}</span>"
            for t, v, m in zip(tokens, values, marked)
        ]
        parts.append(f"<div class='doc'>{''.join(spans)}</div>")
    parts.append("</body></html>")
    util.atomic_write_text("\n".join(parts), path_html)

    figure = Figure(figsize=(12, 2.2 * len(docs) + 0.8))
    axes = figure.subplots(len(docs), 1, squeeze=False)[:, 0]
    for axis, (title, tokens, values, marked) in zip(axes, docs):
        # one line per token as a single collection: far cheaper to draw than bar patches
        axis.vlines(range(len(values)), 0, values, colors=["#1a5fb4" if m else "#e65000" for m in marked],
                    linewidth=max(0.5, min(4.0, 600 / max(len(values), 1))))
        title = str(title)
        axis.set_title(title if len(title) <= 130 else title[:129] + "…", fontsize=9, loc="left")
        axis.set_ylabel("weight")
        axis.set_xlim(-1, max(len(values), 1))
        axis.set_ylim(0, max(high, 1e-12) * 1.05)
        if len(tokens) <= 80:
            axis.set_xticks(range(len(tokens)), [t.strip() or "·" for t in tokens], rotation=90, fontsize=6)
        else:
            axis.set_xlabel("token position")
    figure.suptitle(heading + (" (blue: answer tokens)" if highlight is not None else ""))
    figure.subplots_adjust(hspace=0.7 if any(len(d[1]) <= 80 for d in docs) else 0.55)
    with util.atomic_path(path_png) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def render_document_weights(tokenizer, collator, groups, weigh, device, stem, heading="Token weights"):
    """Render to `stem`.html/.png the weights `weigh(batch)` gives documents, each given as the
    list of its Examples: its answer tokens marked, its questions and answers as the title."""
    batch = document_batch(collator, groups, device)
    with torch.no_grad():
        weights = weigh(batch)
    titles = ["   ".join(f"Q: {e.question}  A: {e.answer}" for e in group) for group in groups]
    render_weights(tokenizer, batch["text_ids"], weights, Path(stem).with_suffix(".html"),
                   Path(stem).with_suffix(".png"), attention_mask=batch["text_mask"],
                   highlight=batch.get("answer_mask"), titles=titles, heading=heading)


# ---------------------------------------------------------------------------------------------
# The training loop


def check_config(cfg):
    """Every problem the user can fix, found before any work is done."""
    util.check_numbers(cfg, positive_ints=["update_batch_size", "grad_acc_steps", "reset_base_freq", "num_inner_steps",
                                           "loc_batch_size", "n_epochs", "val_steps", "sample_steps", "sample_docs"],
                       optional_positive_ints=["val_batches", "torch_threads"],
                       positive=["inner_lr", "outer_lr", "grad_clip_thresh"], non_negative=["c_kl", "c_norm"])
    steps = cfg.max_outer_steps
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
        raise UsageError(f"max_outer_steps={steps} must be an integer >= 0 (or null for no cap)")
    from weight_model import WEIGHT_MODELS

    name = cfg.model.get("name")
    if name not in WEIGHT_MODELS or not WEIGHT_MODELS[name].learned:
        raise UsageError(f"model={name} has nothing to learn; task=train needs model=CaMeLS")
    state_dict = base_state_dict(cfg)
    if state_dict and not Path(state_dict).is_file():
        raise UsageError(f"base_model_state_dict {state_dict} does not exist; point it at a .pt state dict")
    if cfg.reset_base_freq % cfg.update_batch_size:
        raise UsageError(f"reset_base_freq={cfg.reset_base_freq} must be a multiple of "
                         f"update_batch_size={cfg.update_batch_size}")
    if cfg.inner_backend not in INNER_BACKENDS:
        raise UsageError(f"inner_backend={cfg.inner_backend} is unknown; use one of {', '.join(INNER_BACKENDS)}")
    if cfg.grad_checkpointing and cfg.inner_backend != "torch_func":
        raise UsageError("grad_checkpointing=true needs inner_backend=torch_func (higher's patched modules "
                         "cannot recompute activations with the right fast weights)")
    if cfg.web_text_loc and not web_text_path(cfg):
        raise UsageError("web_text_loc=true needs web_text_csv=/path/to/openwebtext.csv "
                         f"(dataset={cfg.dataset.name} names none), or set web_text_loc=false")
    if cfg.resume_from and not (Path(cfg.resume_from) / "checkpoints" / "last" / RESUME_FILE).is_file():
        raise UsageError(f"resume_from={cfg.resume_from} holds no checkpoints/last/{RESUME_FILE}; "
                         "point it at the folder of a task=train run that validated at least once")
    util.check_wandb(cfg)


def base_state_dict(cfg):
    """base_model_state_dict, also accepted under its older name base_model_state_dict_path."""
    return cfg.get("base_model_state_dict") or cfg.get("base_model_state_dict_path")


def web_text_path(cfg):
    return cfg.get("web_text_csv") or cfg.dataset.get("web_text_csv")


def output_dir(cfg):
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

    def __init__(self, cfg, base_model, weight_model, tokenizer, train_examples, val_examples, web_texts, out_dir,
                 device):
        self.cfg = cfg
        self.settings = MetaSettings.from_config(cfg)
        self.base_model = base_model
        self.weight_model = weight_model
        self.tokenizer = tokenizer
        self.device = device
        self.out_dir = Path(out_dir)
        self.collator = QACollator.from_config(tokenizer, cfg.dataset)
        self.start_state = self.snapshot_base()
        self.trainable = [p for p in weight_model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.trainable, lr=float(cfg.outer_lr))
        self.train_examples = train_examples
        self.val_batches = batched(group_shuffle(val_examples, example_group, random.Random(cfg.seed)),
                                   cfg.update_batch_size)[: cfg.val_batches]
        if len(batched(train_examples, cfg.update_batch_size)) == 0 or not self.val_batches:
            raise UsageError(f"the train and val splits need at least update_batch_size={cfg.update_batch_size} "
                             f"examples each (have {len(train_examples)} and {len(val_examples)})")
        self.web_texts = web_texts
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
    def snapshot_base(self):
        return [p.detach().clone() for p in self.base_model.parameters()]

    def load_base(self, params):
        with torch.no_grad():
            for p, value in zip(self.base_model.parameters(), params):
                p.copy_(value)

    def reset_base(self):
        self.load_base(self.start_state)
        self.docs_since_reset = 0

    def advance_base(self, updated, n_docs):
        """Carry the updated weights to the next batch; back to the start every reset_base_freq docs."""
        self.load_base(updated)
        self.docs_since_reset += n_docs
        if self.docs_since_reset >= self.cfg.reset_base_freq:
            self.reset_base()

    # -- one batch ----------------------------------------------------------------------------
    def loc_batches(self, rng):
        if not self.web_texts:
            return {}
        texts = rng.sample(self.web_texts, min(self.cfg.loc_batch_size, len(self.web_texts)))
        ids, mask = self.collator.encode_texts(texts)
        return {"web_text": (ids.to(self.device), mask.to(self.device))}

    def train_batch(self, examples):
        """Forward and backward of one batch (gradients accumulate in the weight model)."""
        batch = make_batch(self.collator, examples, self.device)
        weights = self.weight_model(batch["text_ids"], batch["text_mask"])
        loss, metrics, updated = outer_loss(self.base_model, weights, batch, self.loc_batches(self.loc_rng),
                                            self.settings, differentiable=True)
        (loss / self.cfg.grad_acc_steps).backward(inputs=self.trainable)
        self.advance_base(updated, len(examples))
        metrics["weight_mean"] = (weights.detach() * batch["text_mask"]).sum().item() / batch["text_mask"].sum().item()
        mass = answer_mass(weights, batch)
        if mass:
            metrics["answer_weight_share"] = mass[0] / max(mass[1], 1e-30)
        return metrics

    @torch.no_grad()
    def batch_weights(self, batch):
        return self.weight_model(batch["text_ids"], batch["text_mask"])

    def validate(self):
        """The training procedure on the validation batches without second-order gradients, from
        the starting base weights; the training base-model state is restored afterwards."""
        training_state, docs_since_reset = self.snapshot_base(), self.docs_since_reset
        was_training = self.weight_model.training
        self.weight_model.eval()
        self.reset_base()
        loc_rng = random.Random(self.cfg.seed + 2)
        sums, mass = {}, [0.0, 0.0, 0, 0]
        for examples in tqdm(self.val_batches, desc="validation", leave=False, disable=not self.cfg.progress):
            batch = make_batch(self.collator, examples, self.device)
            weights = self.batch_weights(batch)
            _, metrics, updated = outer_loss(self.base_model, weights, batch, self.loc_batches(loc_rng),
                                             self.settings, differentiable=False, diagnostics=True)
            self.advance_base(updated, len(examples))
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            batch_mass = answer_mass(weights, batch)
            if batch_mass:
                mass = [a + b for a, b in zip(mass, batch_mass)]
        self.load_base(training_state)
        self.docs_since_reset = docs_since_reset
        self.weight_model.train(was_training)
        result = {key: value / len(self.val_batches) for key, value in sums.items()}
        result["total"] = result.pop("outer_loss")
        if mass[3]:
            result["answer_weight_share"] = mass[0] / max(mass[1], 1e-30)
            result["answer_token_share"] = mass[2] / mass[3]
        return result

    # -- outputs ------------------------------------------------------------------------------
    def log(self, row):
        row = {k: (round(v, 8) if isinstance(v, float) else v) for k, v in row.items()}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            split = row["split"]
            self.wandb_run.log({f"{split}/{k}": v for k, v in row.items() if k not in ("split", "step")},
                               step=row["step"])

    def save_checkpoint(self, name, info):
        with util.atomic_dir(self.out_dir / "checkpoints" / name) as folder:
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

    def render_samples(self):
        was_training = self.weight_model.training
        self.weight_model.eval()
        render_document_weights(self.tokenizer, self.collator, self.sample_documents(), self.batch_weights,
                                self.device, self.out_dir / "samples" / f"step_{self.step:06d}",
                                heading=f"CaMeLS weights after {self.step} outer steps")
        self.weight_model.train(was_training)

    def run_validation(self, started):
        metrics = self.validate()
        improved = metrics["total"] < self.best_val
        self.log(dict(split="val", step=self.step, epoch=self.epoch, elapsed_s=time.time() - started, **metrics))
        if improved:
            self.best_val = metrics["total"]
            self.save_checkpoint("best", dict(step=self.step, epoch=self.epoch, val=metrics))
        return metrics

    # -- resuming -----------------------------------------------------------------------------
    def save_last(self, val):
        """checkpoints/last/: the weight model, plus everything needed to continue the run from
        this optimiser step exactly (taken only between optimiser steps, with no pending gradients)."""
        state = dict(step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                     epoch_rng_state=self.epoch_rng_state, loc_rng_state=self.loc_rng.getstate(),
                     docs_since_reset=self.docs_since_reset, best_val=self.best_val, val_start=self.val_start,
                     optimizer=self.optimizer.state_dict(), base_params=[p.cpu() for p in self.snapshot_base()],
                     torch_rng_state=torch.get_rng_state(),
                     cuda_rng_states=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
        with util.atomic_dir(self.out_dir / "checkpoints" / "last") as folder:
            self.weight_model.save(folder)
            (folder / "training_state.json").write_text(json.dumps(dict(step=self.step, epoch=self.epoch, val=val),
                                                                   indent=1))
            torch.save(state, folder / RESUME_FILE)

    def resume(self, folder):
        from weight_model import load_weight_model

        state = torch.load(Path(folder) / RESUME_FILE, map_location="cpu", weights_only=True)
        self.weight_model.load_state_dict(load_weight_model(folder).state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_base([p.to(self.device) for p in state["base_params"]])
        for key in ("step", "epoch", "batch_in_epoch", "epoch_rng_state", "docs_since_reset", "best_val", "val_start"):
            setattr(self, key, state[key])
        self.loc_rng.setstate(state["loc_rng_state"])
        torch.set_rng_state(state["torch_rng_state"])
        if state["cuda_rng_states"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng_states"])

    # -- the loop -----------------------------------------------------------------------------
    def fit(self):
        cfg = self.cfg
        batches_per_epoch = len(batched(self.train_examples, cfg.update_batch_size))
        total_steps = cfg.n_epochs * batches_per_epoch // cfg.grad_acc_steps
        if cfg.max_outer_steps is not None:
            total_steps = min(total_steps, int(cfg.max_outer_steps))
        started = time.time()
        resuming = self.val_start is not None
        if not resuming:
            self.val_start = self.run_validation(started)
            self.render_samples()
        last_val = self.val_start
        progress = tqdm(total=total_steps, initial=self.step, desc="meta-train", disable=not cfg.progress)
        self.weight_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        accumulated, window, step_started = 0, [], time.time()
        for epoch in range(max(self.epoch, 1), cfg.n_epochs + 1):
            if self.step >= total_steps:
                break
            if not (resuming and epoch == self.epoch and self.batch_in_epoch):
                self.epoch, self.batch_in_epoch = epoch, 0
                self.epoch_rng_state = self.shuffle_rng.getstate()
                self.reset_base()
            # the same generator state gives the same order, also when a resumed run re-enters an epoch
            self.shuffle_rng.setstate(self.epoch_rng_state)
            order = group_shuffle(self.train_examples, example_group, self.shuffle_rng)
            batches = batched(order, cfg.update_batch_size)
            for index, examples in enumerate(batches):
                if index < self.batch_in_epoch:
                    continue
                if self.step >= total_steps:
                    break
                window.append(self.train_batch(examples))
                self.batch_in_epoch = index + 1
                accumulated += 1
                if accumulated < cfg.grad_acc_steps:
                    continue
                grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, float(cfg.grad_clip_thresh))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                means = {k: sum(m[k] for m in window if k in m) / sum(k in m for m in window)
                         for k in dict.fromkeys(k for m in window for k in m)}
                row = dict(split="train", step=self.step, epoch=epoch, **means, grad_norm=grad_norm.item(),
                           step_s=time.time() - step_started, elapsed_s=time.time() - started)
                self.log(row)
                progress.update(1)
                progress.set_postfix(outer=f"{row['outer_loss']:.4f}", val=f"{last_val['total']:.4f}")
                accumulated, window, step_started = 0, [], time.time()
                if self.step % cfg.val_steps == 0:
                    last_val = self.run_validation(started)
                    self.save_last(last_val)
                if self.step % cfg.sample_steps == 0:
                    self.render_samples()
            # an epoch is complete when all its batches were used, or when only batches too few for
            # another optimiser step were left at the natural end of training (not a max_outer_steps cap)
            capped = cfg.max_outer_steps is not None and self.step >= int(cfg.max_outer_steps)
            if cfg.save_epoch_checkpoints and (self.batch_in_epoch == len(batches) or not capped):
                self.save_checkpoint(f"epoch_{epoch}", dict(step=self.step, epoch=epoch))
        progress.close()
        if self.step % cfg.val_steps or (resuming and last_val is self.val_start):
            last_val = self.run_validation(started)
        self.render_samples()
        self.save_last(last_val)
        summary = dict(steps=self.step, epochs=self.epoch, wall_s=time.time() - started, val_start=self.val_start,
                       val_end=last_val, best_val_total=self.best_val, output_dir=str(self.out_dir))
        util.atomic_write_text(json.dumps(summary, indent=1), self.out_dir / "summary.json")
        return summary


def example_group(example):
    return example.group or example.doc_id


def train(cfg):
    """Meta-train a weight model as configured by run.py's task=train; returns the run summary."""
    from omegaconf import OmegaConf

    from weight_model import build_weight_model

    check_config(cfg)
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    device = util.pick_device(cfg.device)
    dtype = util.pick_dtype(cfg.dtype)
    out_dir = output_dir(cfg)
    util.set_seed(cfg.seed)
    train_examples = load_split(cfg.dataset, "train")
    val_examples = load_split(cfg.dataset, "val")
    web_texts = load_web_text(web_text_path(cfg)) if cfg.web_text_loc else []
    tokenizer = util.load_tokenizer(cfg.tokenizer_name or cfg.base_model)
    # second-order gradients through SDPA attention are not implemented on every device
    base_model = util.load_causal_lm(cfg.base_model, base_state_dict(cfg), attn_implementation="eager",
                                     torch_dtype=dtype).to(device)
    base_model.eval()  # no dropout: the meta-gradient is the gradient of one function
    weight_model = build_weight_model(cfg.model, tokenizer).to(device=device, dtype=dtype)
    trainer = MetaTrainer(cfg, base_model, weight_model, tokenizer, train_examples, val_examples, web_texts,
                          out_dir, device)
    if cfg.resume_from:
        trainer.resume(out_dir / "checkpoints" / "last")
    out_dir.mkdir(parents=True, exist_ok=True)
    config_name = f"config_resumed_at_step_{trainer.step}.yaml" if cfg.resume_from else "config.yaml"
    util.atomic_write_text(OmegaConf.to_yaml(cfg, resolve=True), out_dir / config_name)
    if cfg.get("wandb"):
        import wandb

        trainer.wandb_run = wandb.init(project=cfg.wandb_project, dir=str(out_dir),
                                       config=OmegaConf.to_container(cfg, resolve=True))
    try:
        summary = trainer.fit()
    finally:
        if trainer.wandb_run is not None:
            trainer.wandb_run.finish()
    val_start, val_end = summary["val_start"], summary["val_end"]
    print(f"meta-training: {summary['steps']} outer steps in {summary['wall_s']:.0f}s; validation outer loss "
          f"{val_start['total']:.4f} -> {val_end['total']:.4f}; checkpoints in {out_dir / 'checkpoints'}")
    return summary
