"""Loading tokenizers, causal LMs and state dicts, with one-line errors for what cannot be loaded."""

from pathlib import Path

import torch

from plumbing.errors import UsageError, first_line
from plumbing.files import load_tensors


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
        raise UsageError(
            f"state dict {path} holds no name -> tensor mapping; save it with torch.save(model.state_dict(), path)"
        )
    state = check_state_dict_fits(model, state, f"state dict {path}", "load it into the architecture it was saved from")
    model.load_state_dict(state, strict=False)
    check_finite(model, f"state dict {path}")


def check_finite(model, source):
    """A model whose weights hold NaN or infinity (e.g. saved from a diverged run) is refused."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UsageError(
                f"{source} holds non-finite values (NaN or infinity, e.g. in {name}); "
                "it comes from a diverged run: use an earlier checkpoint"
            )


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
