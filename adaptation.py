"""Online adaptation of a causal LM on a stream of documents: the loop task=eval and task=adapt share
(`load_for_adaptation` + `adapt_on_stream`), task=adapt itself (`run.py task=adapt documents=...`), and
`adapt`, the same adaptation for Python callers (docs/api.md).

Each task=adapt run folder holds:
    model/          the adapted model and its tokenizer (save_pretrained; AutoModelForCausalLM.from_pretrained
                    and AutoTokenizer.from_pretrained load it)
    documents.csv   one row per document, in stream order: index, name (its file name, a name/title
                    column, or its first words), n_tokens (as adapted: cut to the models' positions) and
                    three mean next-token losses (nats per predicted token, no weights, eval mode):
                    loss_base (the base model, before any adaptation), loss_before_step (the model just
                    before the optimiser step that includes the document: what the stream taught so far)
                    and loss_after (the model at the end of the whole stream)
    weights.html/.png  the weights of the first `render_documents` documents
    config.yaml     the resolved configuration
    summary.json    the run's numbers (written last: it marks the run complete)
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from exp_datasets import QACollator, load_split, make_stream
from exp_datasets.base import read_csv
from exp_datasets.collate import min_positions
from plumbing import distributed, environment, files, loading, run_folder, schemas
from plumbing.errors import UsageError, first_line
from plumbing.schemas import SPLITS, stream_name
from subroutines import AdaptationSettings, check_optimizer, weighted_train
from util import at_least_float32
from weight_model import WEIGHT_MODELS, build_weight_model, load_weight_model

log = logging.getLogger(__name__)
ADAPT_STATE = "adapt_state.pt"
MODEL_DIR = "model"
DOCUMENT_FILE_TYPES = (".csv", ".jsonl")
RUN_FOLDER = run_folder.RunProtocol(
    outputs=("summary.json", "documents.csv", MODEL_DIR, "weights.html", "weights.png", "config.yaml", ADAPT_STATE),
    resumable=(*run_folder.RUNTIME_OPTIONS, "save_state_every"),
    state=ADAPT_STATE,
)


# ---------------------------------------------------------------------------------------------
# What task=eval and task=adapt share


def check_adaptation(cfg) -> None:
    """The checks of the options task=eval and task=adapt share, before anything is loaded."""
    schemas.check_values(cfg)
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
        raise UsageError(f"task={cfg.task_name} runs in one process; start it with python, not torchrun")
    environment.check_wandb(cfg)


def dataset_texts(dataset_cfg, stream_texts):
    """Every document the dataset config reaches (all splits) plus the stream's: TF-IDF's corpus."""
    texts = list(stream_texts)
    for split in SPLITS:
        try:
            texts += [example.text for example in load_split(dataset_cfg, split)]
        except UsageError:  # a split whose files this config does not have is not part of the corpus
            continue
    return texts


def configured_weight_model(cfg, tokenizer, base_model, stream=None, corpus=None):
    """The weight model of `cfg`, bound to `base_model` as it is before the stream (weightings read from
    the adapted model need it): loaded from weight_model_path, or built from its config (TF-IDF fits on
    `corpus`, a zero-argument function returning texts; the oracle reads the answers of `stream`, a list
    of Documents)."""
    if cfg.weight_model_path and not WEIGHT_MODELS[cfg.model.name].learned:
        # one sweep may cover model=uniform,ssm,TFIDF,CaMeLS with the CaMeLS checkpoint given once
        log.info(f"model={cfg.model.name} has no parameters: weight_model_path is not used")
        cfg.weight_model_path = None
    if cfg.weight_model_path:
        weight_model = load_weight_model(cfg.weight_model_path, tokenizer, cfg.model)
        cfg.model.pretrained_model = weight_model.options["pretrained_model"]  # record the real body
        return weight_model.bind(base_model)
    return build_weight_model(cfg.model, tokenizer, documents=corpus, stream=stream).bind(base_model)


@dataclass
class Adaptation:
    """What a configured adaptation works with: the base model (on `device`, adapted in place), its
    tokenizer, the weight model and the collator whose lengths both models can hold."""

    tokenizer: object
    base_model: torch.nn.Module
    weight_model: torch.nn.Module
    collator: QACollator
    device: torch.device


def load_for_adaptation(cfg, stream=None, corpus: Optional[Callable[[], List[str]]] = None) -> Adaptation:
    """Seed, then load the base model and its tokenizer (tokenizer_name, base_model, base_model_state_dict,
    dtype), the weight model (configured_weight_model with `stream` and `corpus`) and the collator,
    everything on cfg.device. task=eval and task=adapt load through here, so that both adapt alike."""
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    device = environment.pick_device(cfg.device)
    environment.set_seed(cfg.seed)
    tokenizer = loading.load_tokenizer(cfg.tokenizer_name or cfg.base_model)
    base_model = loading.load_causal_lm(
        cfg.base_model, loading.base_state_dict(cfg), torch_dtype=environment.pick_dtype(cfg.dtype)
    )
    weight_model = configured_weight_model(cfg, tokenizer, base_model, stream, corpus)
    collator = QACollator.from_config(
        tokenizer, cfg.dataset, models=[base_model, weight_model], answer_match=cfg.get("answer_match", "all")
    )
    if cfg.grad_checkpointing:
        base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base_model.config.use_cache = False
    return Adaptation(tokenizer, base_model.to(device), weight_model.to(device), collator, device)


def adapt_on_stream(
    cfg,
    parts: Adaptation,
    texts: Sequence[str],
    state_path: Path,
    resume_state=None,
    saved_with_state: Callable[[], dict] = dict,
    callback=None,
    every_k_documents=None,
) -> dict:
    """Fine-tune parts.base_model on `texts` with cfg's adaptation options (weighted_train), saving the
    resumable state to `state_path` every cfg.save_state_every documents together with what
    `saved_with_state()` returns, and continuing from `resume_state` (such a saved state) when given.
    callback(n_documents) runs after every `every_k_documents` documents. Returns weighted_train's
    dict and the wall time; a weighting that does not adapt (model=none) leaves the model as it is."""
    started = time.time()
    if not parts.weight_model.adapts:
        return dict(n_steps=0, n_batches=0, mean_loss=None, diverged=None, wall_time_s=0.0)
    settings = AdaptationSettings.from_config(cfg)
    settings = AdaptationSettings(**{**settings.__dict__, "every_k_documents": every_k_documents})

    def save_state(state):
        files.atomic_torch_save(dict(state, **saved_with_state()), state_path)

    result = weighted_train(
        parts.base_model,
        parts.weight_model,
        list(texts),
        parts.collator,
        parts.device,
        settings,
        progress=bool(cfg.progress),
        callback=callback,
        resume_state=resume_state,
        save_state=save_state,
    )
    return dict(result, wall_time_s=time.time() - started)


def adapt(
    base_model,
    tokenizer,
    weight_model,
    texts: Sequence[str],
    settings: AdaptationSettings = AdaptationSettings(),
    max_text_len: int = 1024,
    device: Optional[str] = None,
    progress: bool = False,
) -> dict:
    """Fine-tune `base_model` in place on `texts`, in order, with the token weights of `weight_model`
    (as task=adapt and task=eval do; `settings` holds optimizer, lr, batch_size, grad_acc_steps,
    grad_clip_thresh, n_epochs). Documents are cut to `max_text_len` tokens and to what both models
    hold. Returns {"n_steps", "n_batches", "mean_loss", "diverged"} (diverged: None, or where a
    non-finite loss stopped the stream); the adapted model is `base_model` itself, left in eval mode."""
    device = torch.device(device) if device else next(base_model.parameters()).device
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    collator = QACollator(tokenizer, max_text_len=max_text_len, max_positions=min_positions([base_model, weight_model]))
    weight_model.bind(base_model)
    base_model.to(device)
    weight_model.to(device)
    if not weight_model.adapts:
        return dict(n_steps=0, n_batches=0, mean_loss=None, diverged=None)
    return weighted_train(base_model, weight_model, list(texts), collator, device, settings, progress=progress)


@torch.no_grad()
def document_losses(model, collator: QACollator, texts: Sequence[str], device, batch_size: int = 8) -> List[float]:
    """Each document's mean next-token loss (nats per predicted token, no weights) under `model` in eval
    mode, the document cut as adaptation cuts it (collator.max_text_len)."""
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, len(texts), batch_size):
        ids, mask = collator.encode_texts(list(texts[start : start + batch_size]))
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        token_nll = F.cross_entropy(at_least_float32(logits[:, :-1]).transpose(1, 2), ids[:, 1:], reduction="none")
        targets = mask[:, 1:].to(token_nll.dtype)
        losses += ((token_nll * targets).sum(1) / targets.sum(1).clamp(min=1)).tolist()
    model.train(was_training)
    return losses


# ---------------------------------------------------------------------------------------------
# task=adapt: the documents


def check_config(cfg) -> None:
    """task=adapt's checks before anything is loaded."""
    check_adaptation(cfg)
    if cfg.model.name == "oracle":
        raise UsageError(
            "model=oracle weighs the answers of a dataset's questions, which task=adapt does not have; "
            "use task=eval for the oracle, or another model"
        )
    if cfg.documents:
        path = Path(cfg.documents)
        if not path.exists():
            raise UsageError(
                f"documents={path} does not exist; give a .csv or .jsonl file with a text column, "
                "or a folder of .txt files"
            )
        if path.is_file() and path.suffix.lower() not in DOCUMENT_FILE_TYPES:
            raise UsageError(
                f"documents={path} is neither a .csv nor a .jsonl file; give one with a text column, "
                "or a folder of .txt files"
            )
        if cfg.downsample_to != -1:
            raise UsageError(
                f"downsample_to={cfg.downsample_to} samples a dataset's stream; documents= are adapted "
                "on as given: drop downsample_to (or pick the documents yourself)"
            )


def read_inputs(cfg):
    """The part of cfg whose paths a task=adapt run reads: with documents=, not the dataset's data files
    (so that adapting on one's own documents never builds the default tiny world for its data)."""
    import copy

    from omegaconf import open_dict

    if not cfg.documents:
        return cfg
    inputs = copy.deepcopy(cfg)
    with open_dict(inputs):
        inputs.dataset = {key: value for key, value in inputs.dataset.items() if key == "name" or "len" in key}
    return inputs


@dataclass
class DocumentStream:
    texts: List[str]
    names: List[str]
    stream: Optional[list] = None  # the dataset's Documents, when the stream is a dataset split
    corpus: Optional[Callable[[], List[str]]] = None


def first_words(text: str, n_words: int = 8) -> str:
    words = text.split()
    return " ".join(words[:n_words]) + (" …" if len(words) > n_words else "")


def read_document_table(path: Path):
    """(texts, names) of a .csv or .jsonl file with a `text` column; names from a `name` or `title`
    column when there is one, else the first words."""
    if path.suffix.lower() == ".csv":
        frame = read_csv(path, ["text"], "documents")
    else:
        try:
            frame = pd.read_json(path, lines=True, dtype=False)
        except ValueError as err:
            raise UsageError(
                f"documents file {path} is not JSON lines ({first_line(err)}); write one JSON object "
                'per line, e.g. {"text": "..."}'
            ) from None
        if "text" not in frame.columns:
            raise UsageError(
                f"{path} has no 'text' field (fields: {', '.join(map(str, frame.columns))}); each line needs a text"
            )
    texts = ["" if value is None or value != value else str(value) for value in frame["text"]]
    label = next((c for c in ("name", "title") if c in frame.columns), None)
    names = [str(value) for value in frame[label]] if label else [first_words(t) for t in texts]
    return texts, names


def read_text_folder(path: Path):
    """(texts, file names) of the .txt files of a folder, sorted by name."""
    paths = sorted(p for p in path.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    if not paths:
        raise UsageError(f"documents folder {path} holds no .txt files; put one document per .txt file there")
    texts = []
    for file in paths:
        try:
            texts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UsageError(f"{file} is not UTF-8 text; convert it, e.g. iconv -f cp1252 -t utf-8") from None
    return texts, [p.name for p in paths]


def load_documents(cfg) -> DocumentStream:
    """The stream task=adapt adapts on: cfg.documents (a file or folder, in its order; TF-IDF fits on
    these documents), else the dataset's split as task=eval streams it (downsample_to, seed; TF-IDF
    fits on the dataset's documents, as in task=eval)."""
    if cfg.documents:
        path = Path(cfg.documents)
        texts, names = read_text_folder(path) if path.is_dir() else read_document_table(path)
        empty = [i for i, text in enumerate(texts) if not text.strip()]
        if empty:
            raise UsageError(f"{path}: document {empty[0]} ({names[empty[0]]}) is empty; drop it or fill in its text")
        if not texts:
            raise UsageError(f"{path} holds no documents; check the file")
        return DocumentStream(texts, names, corpus=lambda: texts)
    stream = make_stream(load_split(cfg.dataset, cfg.split, cfg.test_path), cfg.downsample_to, cfg.seed)
    texts = [document.text for document in stream]
    return DocumentStream(
        texts, [document.doc_id for document in stream], stream, corpus=lambda: dataset_texts(cfg.dataset, texts)
    )


# ---------------------------------------------------------------------------------------------
# task=adapt: the run


def check_folder(cfg, run_dir) -> None:
    """Refuse a run folder holding a run with other options, before anything is loaded."""
    RUN_FOLDER.check(run_dir, cfg)


def run_adapt(cfg: DictConfig, run_dir: Path) -> dict:
    """One task=adapt run as configured: writes the run folder (module docstring) and returns summary.json's dict.
    The folder is claimed only once every input has loaded, so a run that fails before then leaves
    nothing that stands in the way of the corrected command."""
    from weight_analysis import render_weights

    started = time.time()
    check_config(cfg)
    run_dir = Path(run_dir)
    check_folder(cfg, run_dir)
    summary = RUN_FOLDER.finished(
        run_dir, cfg, "the adaptation summary", "delete it to adapt again, or pass overwrite=true"
    )
    if summary is not None:
        log.info(f"{run_dir} holds this adaptation already complete; nothing to do")
        return summary
    documents = load_documents(cfg)
    parts = load_for_adaptation(cfg, documents.stream, documents.corpus)
    # the inputs loaded: the folder becomes this run's
    resume_state = RUN_FOLDER.claim_with_state(
        run_dir,
        cfg,
        "adaptation state",
        keys=("model", "optimizer", "documents_seen", "rng", "loss_base", "loss_before_step"),
        fix="delete it to adapt from the start",
    )
    state_path = run_dir / ADAPT_STATE
    texts = documents.texts
    source = cfg.documents or f"{cfg.dataset.name}/{stream_name(cfg.split, cfg.test_path)}"
    log.info(
        f"adapting {cfg.base_model} on {len(texts)} documents of {source} with model={cfg.model.name}, "
        f"lr {cfg.lr}, device {parts.device}; output {run_dir}"
    )

    if resume_state is not None:
        loss_base, loss_before = resume_state["loss_base"], resume_state["loss_before_step"]
        log.info(f"resuming the stream after document {resume_state['documents_seen']} from {state_path}")
    else:
        loss_base = document_losses(parts.base_model, parts.collator, texts, parts.device)
        loss_before = [None] * len(texts)
        first = texts[: cfg.batch_size * cfg.grad_acc_steps]  # the first step's documents: the base model's losses
        loss_before[: len(first)] = loss_base[: len(first)]
        if cfg.render_documents:
            shown = texts[: cfg.render_documents]
            ids, mask = parts.collator.encode_texts(shown)
            with torch.no_grad():
                weights = parts.weight_model(ids.to(parts.device), mask.to(parts.device))
            render_weights(
                parts.tokenizer,
                ids,
                weights,
                run_dir / "weights.html",
                run_dir / "weights.png",
                attention_mask=mask,
                titles=[f"{i}: {documents.names[i]}" for i in range(len(shown))],
                heading=f"model={cfg.model.name} weights on the first documents",
            )
    step_documents = cfg.batch_size * cfg.grad_acc_steps

    def before_next_step(n_documents):
        # after the step that ends at a multiple of step_documents: the next step's documents, before it
        if n_documents % step_documents == 0 and n_documents < len(texts) and cfg.n_epochs == 1:
            following = texts[n_documents : n_documents + step_documents]
            losses = document_losses(parts.base_model, parts.collator, following, parts.device)
            loss_before[n_documents : n_documents + len(losses)] = losses

    adaptation = adapt_on_stream(
        cfg,
        parts,
        texts,
        state_path,
        resume_state,
        saved_with_state=lambda: dict(loss_base=loss_base, loss_before_step=loss_before),
        callback=before_next_step,
        every_k_documents=cfg.batch_size,
    )
    if adaptation["diverged"]:
        diverged = adaptation["diverged"]
        raise UsageError(
            f"adaptation diverged at document {diverged['document']} of {len(texts)} "
            f"({diverged['value']}); lr={cfg.lr} is too large for optimizer={cfg.optimizer}: lower lr "
            f"(the run folder {run_dir} keeps no model)"
        )
    loss_after = document_losses(parts.base_model, parts.collator, texts, parts.device)
    n_tokens = [len(ids) for ids in parts.collator.text_tokens(texts)]
    frame = pd.DataFrame(
        dict(
            index=range(len(texts)),
            name=documents.names,
            n_tokens=n_tokens,
            loss_base=loss_base,
            loss_before_step=loss_before if cfg.n_epochs == 1 else [None] * len(texts),
            loss_after=loss_after,
        )
    )
    with files.atomic_path(run_dir / "documents.csv") as tmp:
        frame.to_csv(tmp, index=False)
    if cfg.save_model:
        with files.atomic_dir(run_dir / MODEL_DIR) as tmp:
            parts.base_model.save_pretrained(tmp)
            parts.tokenizer.save_pretrained(tmp)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    summary = {
        "task": "adapt",
        "method": str(cfg.model.name),
        "documents": source,
        "base_model": str(cfg.base_model),
        "lr": float(cfg.lr),
        "optimizer": str(cfg.optimizer),
        "seed": int(cfg.seed),
        "n_documents": len(texts),
        "n_steps": adaptation["n_steps"],
        "mean_train_loss": adaptation["mean_loss"],
        "mean_loss_base": mean(loss_base),
        "mean_loss_after": mean(loss_after),
        "model": str(run_dir / MODEL_DIR) if cfg.save_model else None,
        "wall_time_s": time.time() - started,
        "run_dir": str(run_dir),
    }
    files.atomic_write_text(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)), run_dir / "config.yaml")
    files.atomic_write_text(files.strict_json(summary, indent=2), run_dir / "summary.json")
    state_path.unlink(missing_ok=True)
    log.info(
        f"mean loss on the documents: {summary['mean_loss_base']:.4f} before, {summary['mean_loss_after']:.4f} "
        f"after adapting; model in {summary['model']}"
    )
    return summary
