"""demo.py's options, and the configurations of every command it will run, checked before its first
step: a mistyped value is one line at once instead of a failure after minutes of earlier steps."""

from plumbing import errors, schemas
from plumbing.environment import REPO_ROOT
from plumbing.errors import UsageError


def check_options(cfg):
    """The demo's own keys (conf/demo.yaml): the schema's ranges and choices (schemas.DemoConfig), then
    what ties one key to another."""
    schemas.check_values(cfg)
    for key in ("meta_trained_methods", "unswept_methods", "baselines"):
        if not set(cfg[key]) <= set(cfg.methods):
            raise UsageError(
                f"{key}={list(cfg[key])} is invalid; give a list of names among methods ({', '.join(cfg.methods)})"
            )
    if cfg.meta_trained_methods and not (cfg.meta_train_seeds or cfg.weight_models):
        raise UsageError(
            "meta_train_seeds=[] is invalid; a meta-trained method needs seeds, e.g. [0,1] (or weight_models)"
        )
    if not set(cfg.transfer.target_meta_train) <= set(cfg.transfer.bases):
        raise UsageError(
            f"transfer.target_meta_train={list(cfg.transfer.target_meta_train)} is invalid; give "
            f"names among transfer.bases ({', '.join(cfg.transfer.bases) or 'none'})"
        )
    if cfg.transfer.bases and not cfg.meta_train_seeds:
        raise UsageError(
            "meta_train_seeds=[] is invalid for the transfer experiment: the proxy's weight models "
            "are meta-trained with these seeds"
        )


def compose(config_dir, overrides, what):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(REPO_ROOT / config_dir), version_base=None):
            return hydra_compose("config", overrides=list(overrides))
    except HydraException as err:
        raise UsageError(f"{what}: {errors.composition_error(err)}") from None


def check_commands(cfg, meta_train_overrides):
    """The configurations of QA tuning, meta-training and every evaluation sweep job, composed as the
    steps will compose them and checked by the checks those commands run first."""
    import evaluation
    import meta_train
    import train_qa

    qa_cfg = compose("qa_conf", [f"dataset={cfg.dataset}", *cfg.qa_tune_overrides], "qa_tune_overrides")
    reword(train_qa.check_config, qa_cfg, "qa_tune_overrides")
    reword(
        meta_train.check_config, compose("conf", meta_train_overrides, "meta_train_overrides"), "meta_train_overrides"
    )
    # every method row as the demo runs it (a meta-trained method once per meta-training seed)
    for method, overrides in cfg.all_methods.items():
        for lr in cfg.lrs:
            what = f"methods.{method} with lr={lr}"
            eval_cfg = compose(
                "conf",
                [
                    "task=eval",
                    f"dataset={cfg.dataset}",
                    *cfg.world_overrides,
                    f"base_model={cfg.base_model}",
                    f"lr={lr}",
                    *overrides,
                    *cfg.eval_overrides,
                ],
                what,
            )
            reword(evaluation.check_config, eval_cfg, what)


def reword(check, cfg, what):
    try:
        check(cfg)
    except UsageError as err:
        raise UsageError(f"{what}: {err}") from None


def check(cfg, meta_train_overrides):
    check_options(cfg)
    check_commands(cfg, meta_train_overrides)
