"""Shared helpers: QA metrics, the three losses, model loading, snapshots, atomic writes, errors.

Also one-line usage errors and the value checks of config schemas, seeding, devices, paths.

Nothing here picks a device or touches the filesystem at import time.
"""
import json
import math
import os
import random
import re
import string
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit code 2, no traceback."""


def run_cli(main_fn):
    """Run an entry point so that a `UsageError` (also raised inside Hydra) and a command line Hydra
    cannot compose (model=nope, a malformed override) are one line and exit 2."""
    # without it Hydra catches exceptions of config composition itself, prints a trace and exits 1
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from hydra.errors import HydraException

    with usage_errors_exit():
        try:
            main_fn()
        except HydraException as err:
            raise UsageError(composition_error(err)) from None


def composition_error(err):
    """One line for an error of Hydra's config composition: a value of the wrong type for its schema
    as `key=value is invalid; it must be ...`, anything else as its message on one line."""
    from omegaconf.errors import ValidationError

    cause = err.__cause__
    kind = re.search(r"converted to (\w+)|not a valid (bool)", str(cause)) if isinstance(cause, ValidationError) \
        else None
    wanted = {"Float": "a number", "Integer": "an integer", "bool": "true or false"}.get(kind and (kind[1] or kind[2]))
    if wanted and getattr(cause, "full_key", None):
        return f"{cause.full_key}={cause.value} is invalid; it must be {wanted}"
    return one_line(err)


def one_line(message):
    """A multi-line message (Hydra's lists options one per line) as one line, without its search path."""
    parts = []
    for line in (line.strip() for line in str(message).splitlines()):
        if line.startswith("Config search path"):
            break
        if not line:
            continue
        if parts and parts[-1][-1] not in ":.":
            parts[-1] += ";" if parts[-1][-1] == "'" else ","
        parts.append(line)
    return " ".join(parts)


@contextmanager
def usage_errors_exit():
    """A `UsageError` raised in the block: one line on stderr, exit 2. A Hydra task function wraps
    its body in this, because Hydra prints an extra line for an exception leaving a job."""
    try:
        yield
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


# A rule per kind of value a schema field (configs.py) may declare: (accepts, what it must be)
VALUE_RULES = {
    "positive_int": (lambda v: isinstance(v, int) and v > 0, "it must be a positive integer"),
    "non_negative_int": (lambda v: isinstance(v, int) and v >= 0, "it must be an integer >= 0"),
    "positive": (lambda v: v > 0, "it must be a positive number"),
    "non_negative": (lambda v: v >= 0, "it must be a number >= 0"),
    "documents_or_all": (lambda v: v == -1 or v > 0, "use a number of documents, or -1 for all"),
    "count_or_all": (lambda v: v == -1 or v > 0, "use a number, or -1 for all"),
}


def check_values(cfg, prefix=""):
    """One-line UsageError for the first value of a structured config (and of its nested configs)
    outside the range (metadata "check") or the choices (metadata "choices") its schema declares.
    Hydra has checked the types already; null passes where the schema allows it."""
    import dataclasses
    from typing import Any

    from omegaconf import DictConfig, OmegaConf

    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return
    for spec in dataclasses.fields(schema):
        check, choices = spec.metadata.get("check"), spec.metadata.get("choices")
        # only values with a rule, and nested configs, are read: reading every value could build
        # the default tiny world for a path this run never uses
        if not (check or choices or spec.type is Any) or OmegaConf.is_missing(cfg, spec.name):
            continue
        value = cfg[spec.name]
        if isinstance(value, DictConfig):
            check_values(value, f"{prefix}{spec.name}.")
        if value is None or not (check or choices):
            continue
        if choices and value not in choices:
            raise UsageError(f"{prefix}{spec.name}={value} is unknown; use one of {', '.join(choices)}")
        if check and not VALUE_RULES[check][0](value):
            optional = " (or null)" if type(None) in getattr(spec.type, "__args__", ()) else ""
            raise UsageError(f"{prefix}{spec.name}={value} is invalid; {VALUE_RULES[check][1]}{optional}")


def existing_state_dict(path, option):
    """`path`, the value of option `option`, when it is a file; else a one-line UsageError."""
    if not Path(path).is_file():
        raise UsageError(f"{option} {path} does not exist; point it at a .pt state dict")
    return Path(path)


def base_state_dict(cfg):
    """The base model's state dict file: base_model_state_dict, or the reference's name for it,
    base_model_state_dict_path (checked to exist); None when neither is set."""
    new, old = cfg.get("base_model_state_dict"), cfg.get("base_model_state_dict_path")
    if new and old and str(new) != str(old):
        raise UsageError("base_model_state_dict and base_model_state_dict_path name different files; give one")
    return str(existing_state_dict(new or old, "base_model_state_dict")) if new or old else None


def check_wandb(cfg):
    """Fail before any work when wandb logging is asked for but the package is missing."""
    if cfg.get("wandb"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UsageError("wandb=true but the wandb package is not installed; "
                             "pip install wandb or set wandb=false") from None


# ---------------------------------------------------------------------------------------------
# QA metrics (SQuAD conventions; EM uses a prefix rule so that a generation running past the
# answer still counts when it starts with the answer)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation, drop the articles a/an/the, fold white space."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the normalised prediction, cut to the normalised answer's length, equals it."""
    pred, gold = normalize_answer(prediction), normalize_answer(answer)
    return float(pred[: len(gold)] == gold)


def f1_score(prediction: str, answer: str) -> float:
    """SQuAD token-level F1 between normalised prediction and answer."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(answer).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------
# Losses


def at_least_float32(tensor):
    """Half precision is upcast for the losses; float64 stays float64 (gradient checks need it)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def weighted_lm_loss(logits, input_ids, attention_mask, weights, max_text_len):
    """Token loss of documents, each next-token cross-entropy scaled by the weight of that token.

    Position t predicts token t+1 and is scaled by weights[:, t+1]; padded targets contribute 0.
    The sum is divided by B * (max_text_len - 1), a constant that does not depend on how far the
    batch was padded, so dynamic padding gives the numbers of padding to max_text_len.
    """
    batch_size = input_ids.shape[0]
    token_nll = F.cross_entropy(
        at_least_float32(logits[:, :-1].transpose(1, 2)), input_ids[:, 1:], reduction="none"
    )
    scale = weights[:, 1:] * attention_mask[:, 1:].to(weights.dtype)
    return (token_nll * scale).sum() / (batch_size * (max_text_len - 1))


def answer_nll(logits, labels, reduction="mean"):
    """NLL of the answer tokens. `labels` is -100 wherever the position is not an answer token.

    reduction="mean": mean over all answer tokens of the batch; "none": one mean per example.
    """
    shifted_logits = at_least_float32(logits[:, :-1])
    shifted_labels = labels[:, 1:]
    token_nll = F.cross_entropy(
        shifted_logits.transpose(1, 2), shifted_labels, ignore_index=-100, reduction="none"
    )
    is_answer = (shifted_labels != -100).to(token_nll.dtype)
    if reduction == "mean":
        return (token_nll * is_answer).sum() / is_answer.sum().clamp(min=1)
    if reduction == "none":
        return (token_nll * is_answer).sum(1) / is_answer.sum(1).clamp(min=1)
    raise ValueError(f"unknown reduction {reduction!r}")


def kl_locality(logits_before, logits_after, attention_mask):
    """Mean over unmasked positions of KL(p_before || p_after), computed in float32 (or float64)."""
    log_p = F.log_softmax(at_least_float32(logits_before), dim=-1)
    log_q = F.log_softmax(at_least_float32(logits_after), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    mask = attention_mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------
# Seeding, paths, devices


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir(configured=None) -> Path:
    """Where built artefacts live: the config value, else $CAMELS_CACHE_DIR, else <repo>/.cache."""
    path = configured or os.environ.get("CAMELS_CACHE_DIR") or REPO_ROOT / ".cache"
    return Path(path).expanduser().resolve()


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={name} was asked for but CUDA is not available; use device=cpu")
    return torch.device(name)


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"dtype={name} is unknown; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


# ---------------------------------------------------------------------------------------------
# Models


def load_tokenizer(name_or_path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    # ImportError: transformers guesses a model type from a path (a folder named 'failed' matches 'led')
    except (OSError, ValueError, ImportError) as err:
        raise UsageError(
            f"cannot load a tokenizer from {name_or_path!r} ({first_line(err)}); "
            "give a Hugging Face model name or a folder written by save_pretrained"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path, state_dict_path=None, attn_implementation=None, torch_dtype=None):
    """`AutoModelForCausalLM.from_pretrained`, then optionally a state dict saved by train_qa.py.

    Meta-training needs second-order gradients, which PyTorch's SDPA attention lacks on CPU, so
    it passes attn_implementation="eager".
    """
    from transformers import AutoModelForCausalLM

    kwargs = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    except Exception as err:  # noqa: BLE001 - missing, truncated or foreign files raise many types
        raise UsageError(
            f"cannot load a causal LM from {name_or_path!r} ({first_line(err)}); "
            "give a Hugging Face model name or a folder written by save_pretrained"
        ) from None
    if state_dict_path:
        load_state_dict_into(model, state_dict_path)
    else:
        check_finite(model, f"base model {name_or_path}")
    return model


def load_state_dict_into(model, state_dict_path):
    path = existing_state_dict(state_dict_path, "state dict")
    state = load_tensors(path, "state dict")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UsageError(f"state dict {path} holds no name -> tensor mapping; save it with "
                         "torch.save(model.state_dict(), path)")
    state = check_state_dict_fits(model, state, f"state dict {path}",
                                  "load it into the architecture it was saved from")
    model.load_state_dict(state, strict=False)
    check_finite(model, f"state dict {path}")


def load_tensors(path, what):
    """`torch.load` that never runs code from the file (weights_only=True): a file that pickles more
    than tensors and plain containers, or no readable file at all, is a one-line UsageError."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err):
            raise UsageError(
                f"{what} {path} holds pickled objects other than tensors, which are not loaded because "
                "unpickling can run code; if you trust the file, re-save it as tensors: load it with "
                "torch.load(path, weights_only=False) and save torch.save(model.state_dict(), path) "
                "(or CaMeLS.save(folder) for a weight model)") from None
        raise UsageError(f"{what} {path} is not a readable torch file ({first_line(err).split('. ')[0]}); "
                         "it may be truncated or corrupt: save it again") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UsageError(f"{what} {path} is not a readable torch file ({first_line(err).split('. ')[0]}); "
                         "it may be truncated or corrupt: save it again") from None


def check_finite(model, source):
    """A model whose weights hold NaN or infinity (e.g. saved from a diverged run) is refused."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UsageError(f"{source} holds non-finite values (NaN or infinity, e.g. in {name}); "
                             "it comes from a diverged run: use an earlier checkpoint")


def check_state_dict_fits(model, state, source, fix):
    """`state` without GPT-2's causal-mask buffers (older transformers saved them), after checking
    that its keys and shapes are exactly the model's: else a one-line UsageError ending in `fix`."""
    buffers = (".attn.bias", ".attn.masked_bias")
    state = {k: v for k, v in state.items() if not k.endswith(buffers)}
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(buffers)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        example = (mismatched or missing or unexpected)[0]
        raise UsageError(
            f"{source} does not fit {type(model).__name__} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} mismatched keys, e.g. {example!r}); {fix}"
        )
    return state


def first_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Parameter snapshots: take the model's weights, try something, put them back


def snapshot_parameters(model, device=None):
    """Copies of the model's parameters, in the order of model.parameters(), on `device` (default:
    where each one is; "cpu" keeps a big model's copy off the accelerator)."""
    return [p.detach().clone() if device is None else p.detach().to(device, copy=True) for p in model.parameters()]


@torch.no_grad()
def restore_parameters(model, values):
    """Copy `values` (a snapshot_parameters list, or tensors of the same shapes in the same order)
    into the model's parameters in place."""
    parameters = list(model.parameters())
    if len(parameters) != len(values):
        raise ValueError(f"{len(values)} values for {len(parameters)} parameters")
    for p, value in zip(parameters, values):
        p.copy_(value)


# ---------------------------------------------------------------------------------------------
# Atomic writes: a crash never leaves a half-written file in place of a good one


def _umask_mode(full_mode):
    """`full_mode` less the process umask: what a plain open() or mkdir() would have given."""
    umask = os.umask(0)
    os.umask(umask)
    return full_mode & ~umask


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp makes the file private (0600); outputs should be as readable as ordinary files
    os.chmod(tmp, _umask_mode(0o666))
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def finite_or_none(value):
    """`value` with every non-finite float (NaN, infinity) replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def strict_json(value, **kwargs):
    """JSON that strict parsers read: NaN and infinity become null (Python's json writes NaN tokens)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def atomic_write_text(text, path):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def recover_dir(path):
    """Finish a folder swap of `atomic_dir` that was interrupted: the previous folder is put back
    when the swap stopped between its two renames, and a leftover copy is removed otherwise."""
    import shutil

    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        try:
            os.replace(old, path)
        except FileNotFoundError:  # another process (a torchrun rank checking too) put it back first
            pass
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path):
    """Yield a temporary folder beside `path`; swap it in for `path` only if the block succeeds."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    os.chmod(tmp, _umask_mode(0o777))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
