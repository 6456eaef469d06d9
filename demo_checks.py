"""demo.py's options, and the configurations of every command it will run, checked before its first
step: a mistyped value is one line at once instead of a failure after minutes of earlier steps."""
import re
from contextlib import contextmanager

from omegaconf import DictConfig, ListConfig, OmegaConf

import configs
import util
from util import REPO_ROOT, UsageError

QA_CHECKPOINTS = ("lowest_nll", "highest_f1", "highest_em")
SELECTION_METRICS = ("f1", "em", "nll")


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_options(cfg):
    """The demo's own keys (conf/demo.yaml)."""
    if not (is_int(cfg.parallel_jobs) and cfg.parallel_jobs > 0):
        raise UsageError(f"parallel_jobs={cfg.parallel_jobs} is invalid; it must be a positive integer")
    if not isinstance(cfg.lrs, ListConfig) or not cfg.lrs or not all(is_number(v) and v > 0 for v in cfg.lrs):
        raise UsageError(f"lrs={cfg.lrs} is invalid; give a list of positive numbers, e.g. lrs=[1e-4,1e-3]")
    if cfg.qa_checkpoint not in QA_CHECKPOINTS:
        raise UsageError(f"qa_checkpoint={cfg.qa_checkpoint} is unknown; use one of {', '.join(QA_CHECKPOINTS)}")
    if not re.fullmatch(r"best|last|epoch_[1-9]\d*", str(cfg.weight_checkpoint)):
        raise UsageError(f"weight_checkpoint={cfg.weight_checkpoint} is unknown; use best, last or epoch_<k>")
    if not isinstance(cfg.test_seeds, ListConfig) or not cfg.test_seeds or not all(map(is_int, cfg.test_seeds)):
        raise UsageError(f"test_seeds={cfg.test_seeds} is invalid; give a list of integers, e.g. test_seeds=[1,2,3]")
    if not is_int(cfg.val_seed):
        raise UsageError(f"val_seed={cfg.val_seed} is invalid; it must be an integer")
    for key in ("val_downsample_to", "test_downsample_to"):
        if not (is_int(cfg[key]) and (cfg[key] > 0 or cfg[key] == -1)):
            raise UsageError(f"{key}={cfg[key]} is invalid; use a number of documents, or -1 for all")
    if cfg.selection_metric not in SELECTION_METRICS:
        raise UsageError(f"selection_metric={cfg.selection_metric} is unknown; use one of {', '.join(SELECTION_METRICS)}")
    if not (is_int(cfg.heatmap_documents) and cfg.heatmap_documents >= 0):
        raise UsageError(f"heatmap_documents={cfg.heatmap_documents} is invalid; it must be an integer >= 0")
    if not isinstance(cfg.methods, DictConfig) or not cfg.methods:
        raise UsageError("methods must map each method name to a list of run.py overrides")
    for key in ("meta_trained_methods", "unswept_methods", "baselines"):
        if not isinstance(cfg[key], ListConfig) or not set(cfg[key]) <= set(cfg.methods):
            raise UsageError(f"{key}={cfg[key]} is invalid; give a list of names among methods ({', '.join(cfg.methods)})")
    if not isinstance(cfg.meta_train_seeds, ListConfig) or not all(map(is_int, cfg.meta_train_seeds)) or \
            (cfg.meta_trained_methods and not cfg.meta_train_seeds):
        raise UsageError(f"meta_train_seeds={cfg.meta_train_seeds} is invalid; give a list of integers, e.g. [0,1]")
    if not (is_int(cfg.max_lr_extensions) and cfg.max_lr_extensions >= 0):
        raise UsageError(f"max_lr_extensions={cfg.max_lr_extensions} is invalid; it must be an integer >= 0")
    if not (is_int(cfg.bootstrap_resamples) and cfg.bootstrap_resamples >= 100):
        raise UsageError(f"bootstrap_resamples={cfg.bootstrap_resamples} is invalid; use at least 100")
    lists = {"tiny_world_overrides": cfg.tiny_world_overrides, "qa_tune_overrides": cfg.qa_tune_overrides,
             "meta_train_overrides": cfg.meta_train_overrides, "eval_overrides": cfg.eval_overrides,
             **{f"methods.{name}": overrides for name, overrides in cfg.methods.items()}}
    for key, overrides in lists.items():
        if not isinstance(overrides, ListConfig) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise UsageError(f"{key}={overrides} is invalid; give a list of key=value overrides")


@contextmanager
def tiny_world_paths_without_building():
    """${tiny_world:...} gives the default world's paths without building it (step 0 builds it)."""
    OmegaConf.register_new_resolver("tiny_world", configs.planned_tiny_world_path, replace=True)
    try:
        yield
    finally:
        configs.register_resolvers()


def compose(config_dir, overrides, what):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(REPO_ROOT / config_dir), version_base=None):
            return hydra_compose("config", overrides=list(overrides))
    except HydraException as err:
        raise UsageError(f"{what}: {util.composition_error(err)}") from None


def check_commands(cfg, meta_train_overrides):
    """The configurations of QA tuning, meta-training and every evaluation sweep job, composed as the
    steps will compose them and checked by the checks those commands run first."""
    import meta_train
    import run
    import train_qa

    with tiny_world_paths_without_building():
        qa_cfg = compose("qa_conf", [f"dataset={cfg.dataset}", *cfg.qa_tune_overrides], "qa_tune_overrides")
        reword(train_qa.check_config, qa_cfg, "qa_tune_overrides")
        reword(meta_train.check_config, compose("conf", meta_train_overrides, "meta_train_overrides"),
               "meta_train_overrides")
        # every method row as the demo runs it (a meta-trained method once per meta-training seed)
        for method, overrides in cfg.all_methods.items():
            for lr in cfg.lrs:
                what = f"methods.{method} with lr={lr}"
                eval_cfg = compose("conf", ["task=eval", f"dataset={cfg.dataset}", *cfg.world_overrides,
                                            f"base_model={cfg.base_model}", f"lr={lr}", *overrides,
                                            *cfg.eval_overrides], what)
                reword(run.check_eval_config, eval_cfg, what)


def reword(check, cfg, what):
    try:
        check(cfg)
    except UsageError as err:
        raise UsageError(f"{what}: {err}") from None


def check(cfg, meta_train_overrides):
    check_options(cfg)
    check_commands(cfg, meta_train_overrides)
