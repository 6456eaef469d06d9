"""Run folders are never silently overwritten: each run records its options in run_options.json, and
a later run into the same folder must have the same options (then it resumes or has nothing to do),
or pass overwrite=true to replace what is there.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from plumbing.errors import UsageError
from plumbing.files import atomic_write_text, load_tensors, read_json, strict_json

OPTIONS_FILE = "run_options.json"
# Options that say how a run runs and logs, never what it computes: a continuation may change them, and
# runs that differ only in them are one setting (report.py)
RUNTIME_OPTIONS = ("progress", "wandb", "wandb_project", "device", "torch_threads", "overwrite", "cache_dir")


def flatten(container, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(container, dict):
        return {prefix: container}
    flat = {}
    for key, value in container.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def differences(old, new, ignored=()):
    """'key: old -> new' for every option that differs, ignoring keys in `ignored` (and below them)."""

    def kept(key):
        return not any(key == name or key.startswith(name + ".") for name in ignored)

    keys = [k for k in dict.fromkeys([*old, *new]) if kept(k)]
    return [f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in keys if old.get(k) != new.get(k)]


def recorded_options(run_dir):
    path = Path(run_dir) / OPTIONS_FILE
    if not path.is_file():
        return None
    return read_json(path, "the run's options file", "delete the run folder, or pass overwrite=true to replace the run")


def remove_outputs(run_dir, outputs):
    for pattern in outputs:
        for path in Path(run_dir).glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def check(run_dir, options, ignored, outputs, overwrite=False):
    """The options recorded in `run_dir` when they equal `options` (but for `ignored`), None when
    `run_dir` holds no run or overwrite=true; a one-line UsageError for a run with other options."""
    run_dir = Path(run_dir)
    if overwrite:
        return None
    old = recorded_options(run_dir)
    found = [pattern for pattern in outputs if any(run_dir.glob(pattern))]
    if old is None and found:
        raise UsageError(
            f"{run_dir} already holds a run ({found[0]}) that recorded no options; choose another "
            "folder or pass overwrite=true to replace it"
        )
    if old is not None:
        changed = differences(old, json.loads(strict_json(options)), ignored)  # compared as written and read back
        if changed:
            shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise UsageError(
                f"{run_dir} holds a run with other options ({shown}); choose another folder, pass "
                "overwrite=true to replace it, or rerun with its options to resume it"
            )
    return old


def claim(run_dir, options, ignored, outputs, overwrite=False):
    """Make `run_dir` this run's folder. Returns the options recorded by an earlier run with the same
    options (the caller then resumes it or finds it complete), or None when the run starts afresh.

    `options`: this run's options as a flat dict; `ignored`: options that may change between a run
    and its continuation (logging, device, where to stop); `outputs`: glob patterns of what a run
    writes there, removed with overwrite=true. Anything else found is refused with one line.
    """
    run_dir = Path(run_dir)
    old = check(run_dir, options, ignored, outputs, overwrite)
    if overwrite:
        remove_outputs(run_dir, [OPTIONS_FILE, *outputs])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(strict_json(options, indent=1, sort_keys=True), run_dir / OPTIONS_FILE)
    return old


@dataclass(frozen=True)
class RunProtocol:
    """How one kind of run (evaluation, meta-training, QA tuning) uses its folder: the `outputs` it writes
    (glob patterns, removed by overwrite=true), the options a continuation may change (`resumable`:
    logging, hardware, where to stop) and the `state` file it resumes from, if any."""

    outputs: Tuple[str, ...]
    resumable: Tuple[str, ...]
    state: Optional[str] = None

    @staticmethod
    def options(cfg) -> dict:
        """The run's options as recorded: the resolved configuration, flattened."""
        from omegaconf import OmegaConf

        return flatten(OmegaConf.to_container(cfg, resolve=True))

    def check(self, run_dir, cfg) -> None:
        """Refuse `run_dir` when it holds a run with other options, before anything is loaded."""
        check(run_dir, self.options(cfg), self.resumable, self.outputs, bool(cfg.get("overwrite")))

    def claim(self, run_dir, cfg):
        """`claim` with this protocol: the options of an earlier run with the same options, else None."""
        return claim(run_dir, self.options(cfg), self.resumable, self.outputs, bool(cfg.get("overwrite")))

    def finished(self, run_dir, cfg, what, fix, keys=()) -> Optional[dict]:
        """summary.json of a finished run with these options in `run_dir` (checked for `keys`; `what` and
        `fix` name it in an error), else None; with overwrite=true always None. Call after `check`."""
        summary = Path(run_dir) / "summary.json"
        if cfg.get("overwrite") or recorded_options(run_dir) is None or not summary.is_file():
            return None
        return read_json(summary, what, fix, keys)

    def claim_with_state(self, run_dir, cfg, what, keys, fix):
        """`claim`, then the `state` file's tensors to resume from (checked for `keys`; `what` and `fix`
        name it in an error) when the folder held this run and its state, else None."""
        old = self.claim(run_dir, cfg)
        path = Path(run_dir) / self.state
        if old is None or not path.is_file():
            return None
        return load_tensors(path, what, keys=keys, fix=fix)

    def remove_outputs(self, run_dir) -> None:
        remove_outputs(run_dir, self.outputs)
