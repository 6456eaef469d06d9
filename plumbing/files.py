"""Files written so that a crash never leaves a half-written one in place of a good one, JSON that
strict parsers read, and torch files read without running code from them."""

import errno
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from plumbing.errors import UsageError, first_line


def load_tensors(path, what, keys=(), fix="save it again"):
    """`torch.load` that never runs code from the file (weights_only=True): a file that pickles more
    than tensors and plain containers, or no readable file at all, is a one-line UsageError. With
    `keys`, the file must hold a dict with those keys; `fix` ends the message of a damaged file."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err):
            trust = (
                (
                    "; if you trust the file, re-save it as tensors: load it with torch.load(path, "
                    "weights_only=False) and save torch.save(model.state_dict(), path) (or CaMeLS.save(folder) for "
                    "a weight model)"
                )
                if not keys
                else f"; {fix}"
            )
            raise UsageError(
                f"{what} {path} holds pickled objects other than tensors, which are not loaded because "
                f"unpickling can run code{trust}"
            ) from None
        raise UsageError(
            f"{what} {path} is not a readable torch file ({first_line(err).split('. ')[0]}); "
            f"it may be truncated or corrupt: {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UsageError(
            f"{what} {path} is not a readable torch file ({first_line(err).split('. ')[0]}); "
            f"it may be truncated or corrupt: {fix}"
        ) from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise UsageError(
            f"{what} {path} lacks {missing[0]!r} (not a file this program wrote, or of another version): {fix}"
        )
    return state


def read_json(path, what, fix, keys=()):
    """The JSON object in `path`, read back from an earlier run: a file that is not a JSON object
    (truncated, edited, of another kind) or lacks one of `keys` is a one-line UsageError ending in `fix`."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{what} {path} cannot be read ({first_line(err)}); {fix}") from None
    except json.JSONDecodeError as err:
        raise UsageError(
            f"{what} {path} is not valid JSON ({err.msg} at line {err.lineno}; truncated?); {fix}"
        ) from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} {path} holds a JSON {type(value).__name__}, not an object; {fix}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise UsageError(f"{what} {path} has no {missing[0]!r} field; {fix}")
    return value


def write_error(path, err: OSError) -> UsageError:
    """One line for an OS error while writing `path` (a full disk, no permission, a file where a
    folder belongs): what went wrong and what to do; nothing half-written is left behind."""
    reason = err.strerror or first_line(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space (or write elsewhere) and rerun the same command"
    else:
        fix = "check that its folder exists, is a folder and is writable, then rerun the same command"
    return UsageError(f"cannot write {path} ({reason}); {fix}")


def check_folder_path(path, option):
    """A one-line UsageError when `path` (the value of `option`), or a folder above it, exists but is
    not a folder: nothing could be written there."""
    path = Path(path).expanduser().absolute()
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise UsageError(
                    f"{option} {path} cannot be a folder: {part} is an existing file; "
                    "choose another path or move the file"
                )
            return


def _umask_mode(full_mode):
    """`full_mode` less the process umask: what a plain open() or mkdir() would have given."""
    umask = os.umask(0)
    os.umask(umask)
    return full_mode & ~umask


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. An OS
    error while writing (a full disk) is a one-line UsageError naming `path`; the temporary file goes."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        # mkstemp makes the file private (0600); outputs should be as readable as ordinary files
        os.chmod(tmp, _umask_mode(0o666))
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def save_tensors(obj, path):
    """torch.save through a Python file, so that a full disk is an OSError (torch's own writer
    reports it as an unspecific RuntimeError)."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_torch_save(obj, path):
    with atomic_path(path) as tmp:
        save_tensors(obj, tmp)


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
    """Yield a temporary folder beside `path`; swap it in for `path` only if the block succeeds. An OS
    error while writing (a full disk) is a one-line UsageError naming `path`; the temporary folder goes."""
    import shutil

    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        os.chmod(tmp, _umask_mode(0o777))
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def append_line(line, path):
    """Append one line to a log file; an OS error (a full disk) is a one-line UsageError naming it."""
    try:
        with open(path, "a") as handle:
            handle.write(line + "\n")
    except OSError as err:
        raise write_error(path, err) from None
