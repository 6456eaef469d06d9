"""The tiny world: a synthetic miniature of the paper's setting (documents, QA pairs, a tokenizer
and a small pretrained GPT-2) on which every default config, the demo and the tests run.

It is built only by an explicit call: `python -m tiny_world [key=value ...]` builds the recipe of
conf/tiny_world.yaml into <cache>/tiny_world, a variant recipe (any key=value) into
<cache>/tiny_world-<recipe hash>; the entry points call `ensure_built_for(cfg)` before loading
anything, which builds the default world when the run's config points into it and it is missing or
its recipe changed; `build(cfg)` builds any recipe into any folder. The config resolver
${tiny_world:...} only names paths (plumbing.schemas).
"""

import ast
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from plumbing.environment import REPO_ROOT, cache_dir
from plumbing.errors import UsageError
from plumbing.files import atomic_dir

RECIPE_PATH = REPO_ROOT / "conf" / "tiny_world.yaml"
ARTEFACTS = ("data", "base_model")
# Where and how to build, not what: never part of a stage's hash
RUNTIME_KEYS = ("cache_dir", "out_dir", "device", "num_threads", "progress")
# Each stage's config groups; every other key of the recipe describes the data
STAGE_GROUPS = {"model": ("tokenizer", "model", "pretrain"), "report": ("report",)}
# Code each stage's output depends on (relative to the repository); the report also measures with
# the project's own evaluation code, so a change there refreshes the report (not the model)
STAGE_SOURCES = {
    "data": ("tiny_world/world.py",),
    "model": ("tiny_world/model.py",),
    "report": (
        "tiny_world/sanity_report.py",
        "util.py",
        "subroutines.py",
        "exp_datasets/answer_spans.py",
        "exp_datasets/base.py",
        "exp_datasets/collate.py",
        "exp_datasets/registry.py",
    ),
}
STAGE_OUTPUTS = {"data": ("data",), "model": ("base_model",), "report": ("report.json", "report.md")}


def load_recipe(overrides=()):
    """The recipe of conf/tiny_world.yaml with dotlist `overrides`, typed and checked by its schema
    (plumbing.schemas.TinyWorldRecipe, as `python -m tiny_world` composes it)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from plumbing.errors import one_line
    from plumbing.schemas import TinyWorldRecipe

    recipe = OmegaConf.load(RECIPE_PATH)
    for key in ("defaults", "hydra"):
        recipe.pop(key, None)
    try:
        return OmegaConf.merge(OmegaConf.structured(TinyWorldRecipe), recipe, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise UsageError(f"tiny world recipe: {one_line(err)}") from None


def recipe_key(cfg):
    """ "tiny_world" for the recipe of conf/tiny_world.yaml, else "tiny_world-<hash of the recipe>":
    every variant world has a folder of its own, so that no build replaces another recipe's world."""
    from omegaconf import OmegaConf

    def what(recipe):
        return {k: v for k, v in OmegaConf.to_container(recipe, resolve=True).items() if k not in RUNTIME_KEYS}

    recipe = what(cfg)
    if recipe == what(load_recipe()):
        return "tiny_world"
    return "tiny_world-" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def output_root(cfg) -> Path:
    """out_dir when set, else the recipe's own folder (recipe_key) in the cache folder."""
    if cfg.get("out_dir"):
        return Path(cfg.out_dir).expanduser().resolve()
    return cache_dir(cfg.get("cache_dir")) / recipe_key(cfg)


def stage_hashes(cfg):
    """One hash per stage, chained, over the config that affects it and the code that makes it."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    grouped = {g for groups in STAGE_GROUPS.values() for g in groups}
    parts = {"data": {k: v for k, v in plain.items() if k not in grouped and k not in RUNTIME_KEYS}}
    for stage, groups in STAGE_GROUPS.items():
        parts[stage] = {g: plain.get(g) for g in groups}
    hashes, previous = {}, ""
    for stage in ("data", "model", "report"):
        # the code's syntax tree, not its text: reformatting or recommenting it rebuilds nothing
        source = "".join(ast.dump(ast.parse((REPO_ROOT / name).read_text())) for name in STAGE_SOURCES[stage])
        digest = hashlib.sha256(json.dumps([previous, parts[stage], source], sort_keys=True).encode())
        hashes[stage] = previous = digest.hexdigest()[:16]
    return hashes


def read_built(root: Path):
    """The recipe record of a finished build, or {} (nothing there, or not a complete build)."""
    try:
        record = json.loads((root / "recipe.json").read_text())
    except (OSError, ValueError):
        return {}
    stages = record.get("hashes", {})
    return record if all(s in stages for s in STAGE_SOURCES) else {}


def is_current(root: Path, hashes) -> bool:
    return read_built(root).get("hashes") == hashes and all(
        (root / name).exists() for outputs in STAGE_OUTPUTS.values() for name in outputs
    )


def build_lock(root: Path):
    """Serialises builds of one folder across processes (two runs starting at once build once)."""
    from filelock import FileLock

    root.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(root.parent / f".{root.name}.lock")


def check_recipe(cfg):
    """Fail on a recipe that cannot build, before any work starts: the schema's ranges, then what ties
    one key to another."""
    from plumbing.schemas import check_values

    check_values(cfg)
    if cfg.n_qa_entities < 2:
        raise UsageError(f"n_qa_entities={cfg.n_qa_entities} must be at least 2 (some for qa_train, some for qa_val)")
    if not 0 < round(cfg.n_qa_entities * cfg.qa_val_fraction) < cfg.n_qa_entities:
        raise UsageError(
            f"qa_val_fraction={cfg.qa_val_fraction} leaves qa_train or qa_val without entities; "
            "choose a fraction strictly between 0 and 1 (or more n_qa_entities)"
        )
    if cfg.facts_per_doc[1] > 4:
        raise UsageError("facts_per_doc allows at most 4 facts (the smallest entity kind has 4 attributes)")
    if cfg.fact_mentions[1] > 4:
        raise UsageError("fact_mentions allows at most 4 statements of a fact (each attribute has 4 wordings)")
    report_docs = cfg.report.one_step.n_docs + cfg.report.stream.n_docs * cfg.report.stream.n_streams
    if report_docs > cfg.n_test_docs:
        raise UsageError(
            f"the report reads report.one_step.n_docs + report.stream.n_docs x report.stream.n_streams = "
            f"{report_docs} test documents, more than n_test_docs={cfg.n_test_docs}; lower them or "
            "raise n_test_docs"
        )
    if cfg.model.n_embd % cfg.model.n_head:
        raise UsageError(f"model.n_embd={cfg.model.n_embd} must be a multiple of model.n_head={cfg.model.n_head}")


def build(cfg, progress=None) -> Path:
    """Build (or bring up to date) the tiny world described by `cfg` into its output folder and
    return that folder. Stages whose hash is unchanged are copied from the previous build; the
    new build replaces the old one in a single rename, so an interrupted build leaves the old one."""
    check_recipe(cfg)
    progress = cfg.get("progress", True) if progress is None else progress
    root = output_root(cfg)
    hashes = stage_hashes(cfg)
    with build_lock(root):
        if is_current(root, hashes):
            return root
        previous = read_built(root).get("hashes", {}) if root.exists() else {}
        started = time.time()
        timings = {}
        with atomic_dir(root) as tmp:
            for stage in ("data", "model", "report"):
                stage_start = time.time()
                if previous.get(stage) == hashes[stage] and all((root / n).exists() for n in STAGE_OUTPUTS[stage]):
                    for name in STAGE_OUTPUTS[stage]:
                        copy_any(root / name, tmp / name)
                    timings[stage] = "reused"
                    continue
                run_stage(stage, cfg, tmp, progress)
                timings[stage] = round(time.time() - stage_start, 1)
            if (root / "transfer_bases").is_dir():  # tiny_world.transfer_bases's; each records what it was built on
                copy_any(root / "transfer_bases", tmp / "transfer_bases")
            timings["total"] = round(time.time() - started, 1)
            record = dict(hashes=hashes, timings_s=timings, config=_plain(cfg))
            (tmp / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
        summary = json.loads((root / "report.json").read_text()).get("summary", "")
        stages = ", ".join(f"{k} {v}" + ("" if v == "reused" else "s") for k, v in timings.items() if k != "total")
        print(f"tiny world written to {root} in {timings['total']:.0f}s ({stages}); {summary}", flush=True)
    return root


def run_stage(stage, cfg, folder: Path, progress):
    import torch

    from . import model, sanity_report, world

    # set for the stage only: a build inside a test session must not change the process's threads
    threads = torch.get_num_threads()
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg.num_threads)
    try:
        {"data": world.build_data, "model": model.build_model, "report": sanity_report.build_report}[stage](
            cfg, folder, progress
        )
    finally:
        torch.set_num_threads(threads)


def copy_any(source: Path, target: Path):
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


def _plain(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def ensure_built(configured_cache_dir=None) -> Path:
    """The default tiny world's folder, built first when it is missing or its recipe or code changed."""
    cfg = load_recipe([f"cache_dir={configured_cache_dir}"] if configured_cache_dir else [])
    root = output_root(cfg)
    if not is_current(root, stage_hashes(cfg)):
        print(f"building the tiny world into {root} (recipe {RECIPE_PATH}; a few minutes, once)", file=sys.stderr)
        build(cfg)
    return root


def ensure_built_for(cfg) -> None:
    """Build the default tiny world when a value of the run's config `cfg` points into it."""
    from omegaconf import OmegaConf

    from plumbing.schemas import tiny_world_root

    root = str(tiny_world_root(cfg.get("cache_dir")))

    def strings(node):
        if isinstance(node, dict):
            return [s for value in node.values() for s in strings(value)]
        if isinstance(node, list):
            return [s for value in node for s in strings(value)]
        return [node] if isinstance(node, str) else []

    values = strings(OmegaConf.to_container(cfg, resolve=True))
    if any(value == root or value.startswith(root + "/") for value in values):
        ensure_built(cfg.get("cache_dir"))
