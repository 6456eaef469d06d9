"""Files written so that a crash never leaves a half-written one in place of a good one, JSON that
strict parsers read, and torch files read without running code from them."""

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from plumbing.errors import UsageError, first_line


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

