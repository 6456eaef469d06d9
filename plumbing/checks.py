"""Checks Hydra runs before a task starts (conf/config.yaml and qa_conf/config.yaml name them).

Sweeps (`run.py -m ...`): every job is checked before the first one starts, so that a mistyped
value (lr=1e-4,abc) fails at once with one line instead of hours later, and no job folder is made;
a job that fails later (e.g. a diverged run) leaves error.txt in its folder, the others still run,
and the sweep ends with one line naming the failures and exit code 2. A single run into a folder
holding a run with other options is refused before Hydra writes its own files there.

Hydra turns exceptions of callbacks into warnings, so these end the process themselves.
"""

import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from plumbing.errors import UsageError, composition_error, usage_errors_exit
from plumbing.files import atomic_write_text, check_folder_path

ERROR_FILE = "error.txt"


def sweep_jobs(task_overrides):
    """The override lists of the jobs a sweep over `task_overrides` launches (the cartesian product of
    every swept value, as Hydra's basic sweeper orders them)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for override in OverridesParser.create().parse_overrides(list(task_overrides)):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


def quoted_list_overrides(argv):
    """Command-line options with each element of a list of key=value overrides quoted, so that Hydra's
    grammar reads `meta_train_overrides=[inner_lr=0.1,eval=[em,ppl]]` as the two strings it means
    (unquoted, `=` inside a list is a syntax error). Lists without `=` and quoted lists pass unchanged."""
    quoted = []
    for option in argv:
        key, eq, value = option.partition("=")
        if not (eq and value.startswith("[") and value.endswith("]") and "=" in value and not set("'\"") & set(value)):
            quoted.append(option)
            continue
        elements, depth, current = [], 0, ""
        for char in value[1:-1]:
            depth += {"[": 1, "]": -1}.get(char, 0)
            if char == "," and depth == 0:
                elements.append(current)
                current = ""
            else:
                current += char
        elements.append(current)
        quoted.append(f"{key}=[" + ",".join(f"'{e.strip()}'" for e in elements if e.strip()) + "]")
    return quoted


def run_job(task, cfg):
    """`task(cfg, run_dir)` as a Hydra task function. A single run's UsageError is one line and exit 2;
    a sweep job's is recorded in error.txt of its folder and the sweep goes on (on_multirun_end
    reports it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        with usage_errors_exit():
            return task(cfg, run_dir)
    error_file = run_dir / ERROR_FILE
    error_file.unlink(missing_ok=True)
    try:
        return task(cfg, run_dir)
    except UsageError as err:
        atomic_write_text(f"{err}\n", error_file)
        print(
            f"error: sweep job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)}): {err}",
            file=sys.stderr,
            flush=True,
        )
        return None


# task name -> (check, folder_check), registered by the entry points (run.py, train_qa.py) on import:
# check(cfg) runs the task's own checks; folder_check(cfg, run_dir) refuses a folder holding another run
TASKS = {}
QA_TUNE = "qa_tune"  # train_qa.py's configuration has no task_name


def register(name, check, folder_check=None):
    TASKS[name] = (check, folder_check)


def task_of(cfg):
    name = cfg.task_name if "task_name" in cfg else QA_TUNE
    if name not in TASKS:
        raise UsageError(f"task={name} is unknown; use one of {', '.join(t for t in TASKS if t != QA_TUNE)}")
    return TASKS[name]


def check_job(cfg):
    """The checks a job runs on its own configuration before any work."""
    return task_of(cfg)[0](cfg)


def check_run(config):
    """A single run's own checks, then its folder: a folder holding a run with other options is refused.
    Both happen before Hydra writes its own files (.hydra/) there; the task repeats them when it starts."""
    import copy

    from omegaconf import open_dict

    from plumbing.run_folder import OPTIONS_FILE

    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        del cfg["hydra"]
    check, folder_check = task_of(cfg)
    check(cfg)
    try:
        run_dir = Path(str(config.hydra.run.dir))
    except Exception:  # noqa: BLE001 - a folder named by Hydra's own runtime values: never a finished run's
        return
    check_folder_path(run_dir, "the run folder (hydra.run.dir)")
    if folder_check is not None and (run_dir / OPTIONS_FILE).is_file():
        folder_check(cfg, run_dir)


class EarlyChecks(Callback):
    def on_run_start(self, config, config_name=None, **kwargs):
        with usage_errors_exit():
            check_run(config)

    def on_multirun_start(self, config, config_name=None, **kwargs):
        import time

        from hydra import compose

        self.sweep_started = time.time()
        from hydra.errors import HydraException

        jobs = sweep_jobs(config.hydra.overrides.task)
        with usage_errors_exit():
            check_folder_path(config.hydra.sweep.dir, "the sweep folder (hydra.sweep.dir)")
            for number, overrides in enumerate(jobs):
                try:
                    check_job(compose(config_name=config_name, overrides=list(overrides)))
                except (UsageError, HydraException) as err:
                    problem = composition_error(err) if isinstance(err, HydraException) else err
                    raise UsageError(
                        f"sweep job {number} of {len(jobs)} ({' '.join(overrides)}): {problem}; no job was started"
                    ) from None

    def on_multirun_end(self, config, **kwargs):
        # job folders lie at any depth below the sweep folder (hydra.sweep.subdir may name several levels);
        # this sweep's failures are the error files written since it started
        started = getattr(self, "sweep_started", 0.0)
        failed = sorted(
            path for path in Path(config.hydra.sweep.dir).rglob(ERROR_FILE) if path.stat().st_mtime >= started
        )
        if failed:
            first = failed[0].read_text().strip()
            job = failed[0].parent.relative_to(config.hydra.sweep.dir)
            print(
                f"error: {len(failed)} sweep job(s) failed, the others ran; {job}: {first} "
                f"(each failure is in {ERROR_FILE} of its folder)",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(2)
