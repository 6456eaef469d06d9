"""The config schemas (schemas.py): every config composes into its schema with nothing left unset,
Hydra rejects mistyped values and unknown keys with one line, and schemas.check_values enforces the
ranges and choices the schemas declare without resolving anything else."""

import pytest
from conftest import compose
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from plumbing import errors, schemas
from plumbing.environment import REPO_ROOT
from plumbing.errors import UsageError

DATASETS = sorted(p.stem for p in (REPO_ROOT / "conf" / "dataset").glob("*.yaml"))
MODELS = sorted(p.stem for p in (REPO_ROOT / "conf" / "model").glob("*.yaml"))


@pytest.fixture(autouse=True)
def no_tiny_world_build():
    """Nothing here may resolve ${tiny_world:...} (that would build the default tiny world)."""

    def no_build(name):
        raise AssertionError(f"${{tiny_world:{name}}} was resolved")

    OmegaConf.register_new_resolver("tiny_world", no_build, replace=True)
    yield
    schemas.register_resolvers()


def unset_keys(cfg, prefix=""):
    """Keys still MISSING (???), found without resolving any interpolation."""
    found = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            found.append(prefix + key)
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            found += unset_keys(cfg[key], f"{prefix}{key}.")
    return found


@pytest.mark.parametrize("task,schema", [("eval", schemas.EvalConfig), ("train", schemas.TrainConfig)])
def test_every_run_config_composes_into_its_schemas_with_nothing_unset(task, schema):
    # meta-training learns a weight model: only CaMeLS (the tiny world's tuning sets CaMeLS options)
    for dataset in DATASETS:
        for model in MODELS if task == "eval" else ["CaMeLS"]:
            cfg = compose("conf", [f"task={task}", f"dataset={dataset}", f"model={model}"])
            assert OmegaConf.get_type(cfg) is schema
            assert OmegaConf.get_type(cfg.dataset) is schemas.DATASET_SCHEMAS[dataset]
            assert OmegaConf.get_type(cfg.model) is schemas.MODEL_SCHEMAS[cfg.model.name]
            assert unset_keys(cfg) == [], (task, dataset, model)


def test_qa_tuning_reads_the_same_dataset_configs():
    assert (REPO_ROOT / "qa_conf" / "dataset").resolve() == (REPO_ROOT / "conf" / "dataset").resolve()
    for dataset in DATASETS:
        cfg = compose("qa_conf", [f"dataset={dataset}", "model=gpt2-xl"])
        assert OmegaConf.get_type(cfg) is schemas.QATuneConfig and cfg.model == "gpt2-xl"
        assert OmegaConf.get_type(cfg.dataset) is schemas.DATASET_SCHEMAS[dataset]
        assert unset_keys(cfg) == [], dataset


@pytest.mark.parametrize(
    "conf_dir,overrides,message",
    [
        ("conf", ["lr=1e-3x"], "lr=1e-3x is invalid; it must be a number"),
        ("conf", ["task=train", "model=CaMeLS", "inner_lr=5e-4x"], "inner_lr=5e-4x is invalid; it must be a number"),
        ("conf", ["seed=1.5"], "seed=1.5 is invalid; it must be an integer"),
        ("conf", ["progress=sometimes"], "progress=sometimes is invalid; it must be true or false"),
        ("conf", ["model=CaMeLS", "model.head_width=wide"], "model.head_width=wide is invalid; it must be an integer"),
        ("conf", ["dataset.max_text_len=1k"], "dataset.max_text_len=1k is invalid; it must be an integer"),
        ("qa_conf", ["lr=2.5e-5x"], "lr=2.5e-5x is invalid; it must be a number"),
        ("conf", ["lerning_rate=1"], "lerning_rate is not an option; see --help"),
        ("conf", ["grad_acc_step=1"], "grad_acc_step is not an option; did you mean grad_acc_steps"),
    ],
)
def test_mistyped_values_and_unknown_keys_are_one_line_composition_errors(conf_dir, overrides, message):
    with pytest.raises(HydraException) as raised:
        compose(conf_dir, overrides)
    line = errors.composition_error(raised.value)
    assert message in line and "\n" not in line


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optimizer=rmsprop"], "optimizer=rmsprop is unknown; use one of adam, sgd, adafactor"),
        (["split=dev"], "split=dev is unknown; use one of qa_train, qa_val, train, val, test"),
        (["eval_every_k=0"], "eval_every_k=0 is invalid; it must be a positive integer (or null)"),
        (["batch_size=0"], "batch_size=0 is invalid; it must be a positive integer"),
        (["downsample_to=-2"], "downsample_to=-2 is invalid; use a number of documents, or -1 for all"),
        (["dataset.max_text_len=0"], "dataset.max_text_len=0 is invalid; a document needs at least 2 tokens"),
        (["model=CaMeLS", "model.activation=relu"], "model.activation=relu is unknown; use one of softplus"),
        (["task=train", "model=CaMeLS", "c_kl=-0.1"], "c_kl=-0.1 is invalid; it must be a number >= 0"),
        (
            ["task=train", "model=CaMeLS", "max_outer_steps=-1"],
            "max_outer_steps=-1 is invalid; it must be an integer >= 0",
        ),
        (
            ["task=train", "model=CaMeLS", "inner_backend=jax"],
            "inner_backend=jax is unknown; use one of higher, torch_func",
        ),
    ],
)
def test_check_values_enforces_the_declared_ranges_and_choices(overrides, message):
    with pytest.raises(UsageError) as raised:
        schemas.check_values(compose("conf", overrides))
    assert message in str(raised.value)


def tiny_world_paths(node, prefix=""):
    """{dotted key: artefact} of the values that are ${tiny_world:<artefact>}, in an unresolved container."""
    found = {}
    for key, value in node.items():
        if isinstance(value, dict):
            found.update(tiny_world_paths(value, f"{prefix}{key}."))
        elif isinstance(value, str) and value.startswith("${tiny_world:"):
            found[prefix + key] = value.removeprefix("${tiny_world:").removesuffix("}")
    return found


def test_check_values_passes_defaults_and_nulls_and_resolves_nothing_else(tmp_path, monkeypatch):
    """check_values reads no ${tiny_world:...} path. Resolved afterwards with an empty cache, each one names
    its part of the tiny world under the run's cache_dir (else $CAMELS_CACHE_DIR) and nothing is built."""
    resolved = []

    def recording_tiny_world_path(name, *, _root_):
        resolved.append(name)
        return schemas.tiny_world_path(name, _root_=_root_)

    OmegaConf.register_new_resolver("tiny_world", recording_tiny_world_path, replace=True)
    env_cache, run_cache = tmp_path / "env_cache", tmp_path / "run_cache"
    monkeypatch.setenv("CAMELS_CACHE_DIR", str(env_cache))
    run_paths = {"base_model": "base_model", "dataset.data_dir": "data"}
    train_paths = {**run_paths, "model.pretrained_model": "base_model"}
    cases = [
        ("conf", ["task=eval", "eval_every_k=null", "downsample_to=-1"], env_cache, run_paths),
        ("conf", ["task=train", "model=CaMeLS"], env_cache, train_paths),
        ("conf", ["task=train", "model=CaMeLS", f"cache_dir={run_cache}"], run_cache, train_paths),
        ("qa_conf", ["max_steps=null"], env_cache, {"model": "base_model", "dataset.data_dir": "data"}),
    ]
    for conf_dir, overrides, cache, paths in cases:
        cfg = compose(conf_dir, overrides)
        schemas.check_values(cfg)
        assert resolved == [], f"check_values resolved ${{tiny_world:{resolved}}} of {conf_dir} {overrides}"
        assert tiny_world_paths(OmegaConf.to_container(cfg, resolve=False)) == paths
        assert {key: OmegaConf.select(cfg, key) for key in paths} == {
            key: str(cache / "tiny_world" / artefact) for key, artefact in paths.items()
        }, overrides
        assert sorted(resolved) == sorted(paths.values())
        resolved.clear()
    assert not env_cache.exists() and not run_cache.exists(), "resolving a config built the tiny world"
