"""The process's environment, chosen once by an entry point: seeds and random states, device, dtype,
where built artefacts live, and optional Weights & Biases logging."""

import os
import random
from pathlib import Path

import numpy as np
import torch

from plumbing.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent


def check_wandb(cfg):
    """Fail before any work when wandb logging is asked for but the package is missing."""
    if cfg.get("wandb"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UsageError("wandb=true but the wandb package is not installed; "
                             "pip install wandb or set wandb=false") from None


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
