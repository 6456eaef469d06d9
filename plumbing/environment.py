"""The process's environment, chosen once by an entry point: seeds and random states, device, dtype,
where built artefacts live, and optional Weights & Biases logging."""

import os
import random
from pathlib import Path

import numpy as np
import torch

from plumbing.errors import UsageError
from plumbing.files import check_folder_path

REPO_ROOT = Path(__file__).resolve().parent.parent


def check_wandb(cfg):
    """Fail before any work when wandb logging is asked for but the package is missing."""
    if cfg.get("wandb"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UsageError(
                "wandb=true but the wandb package is not installed; pip install wandb or set wandb=false"
            ) from None


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir(configured=None) -> Path:
    """Where built artefacts live: the config value, else $CAMELS_CACHE_DIR, else <repo>/.cache; a path
    that is (or lies under) an existing file is a one-line UsageError."""
    option = "cache_dir" if configured else "CAMELS_CACHE_DIR" if os.environ.get("CAMELS_CACHE_DIR") else "the cache"
    path = Path(configured or os.environ.get("CAMELS_CACHE_DIR") or REPO_ROOT / ".cache").expanduser().resolve()
    check_folder_path(path, option)
    return path


def pick_device(name: str = "auto") -> torch.device:
    """The torch device `name` names (auto: CUDA when there is one); a device this machine does not
    have is a one-line UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"device={name} is not a device; use auto, cpu, cuda, cuda:<index> or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={name} was asked for but CUDA is not available; use device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(
            f"device={name} does not exist: this machine has {torch.cuda.device_count()} CUDA "
            "device(s), numbered from 0"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device={name} was asked for but MPS is not available; use device=cpu")
    return device


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"dtype={name} is unknown; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def rng_state() -> dict:
    """torch's random state (and CUDA's), to continue a run exactly where it was saved."""
    return dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def restore_rng_state(state: dict) -> None:
    """Put back a state from `rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def start_wandb(cfg, run_dir):
    """A Weights & Biases run for this run folder when cfg.wandb is true, else None."""
    if not cfg.get("wandb"):
        return None
    import wandb
    from omegaconf import OmegaConf

    return wandb.init(project=cfg.wandb_project, dir=str(run_dir), config=OmegaConf.to_container(cfg, resolve=True))
