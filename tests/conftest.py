"""Shared test helpers: `tiny_world_small`, a seconds-sized tiny world (data CSVs and a tiny base
model) built once per test session into a temporary folder; `torch_threads`, the one owner of torch's
thread count; `compose` (a config as an entry point composes it), `run_script` (an entry point in a
subprocess, offline) and `world_overrides`/`train_world_overrides` (a run pointed at a tiny world).
Importing plumbing.schemas registers the config resolvers, as every entry point does."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from plumbing import schemas  # noqa: F401 - registers the schemas and resolvers

REPO = Path(__file__).resolve().parents[1]
OFFLINE_ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")


def compose(config_dir, overrides=(), config_name="config", return_hydra_config=False):
    """The configuration `config_dir`/`config_name`.yaml composed with `overrides`, as Hydra composes it
    (with its `hydra` node where `return_hydra_config`)."""
    with initialize_config_dir(config_dir=str(REPO / config_dir), version_base=None):
        return hydra_compose(
            config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config
        )


def directional_derivatives(params, loss_of, eps=1e-6, seed=11):
    """(analytic, numeric) derivative of `loss_of(differentiable)` along one random float64 direction in
    `params`: autograd's gradient dotted with the direction, and the central difference
    (loss(+eps) - loss(-eps)) / 2 eps of the loss computed without a graph."""
    generator = torch.Generator().manual_seed(seed)
    directions = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
    grads = torch.autograd.grad(loss_of(True), params)
    analytic = sum((g * d).sum() for g, d in zip(grads, directions)).item()

    def shifted(scale):
        with torch.no_grad():
            for p, d in zip(params, directions):
                p.add_(scale * d)
        value = loss_of(False).item()  # not under no_grad: an inner loop may take gradients itself
        with torch.no_grad():
            for p, d in zip(params, directions):
                p.sub_(scale * d)
        return value

    return analytic, (shifted(eps) - shifted(-eps)) / (2 * eps)


def run_script(*args, cwd=REPO, timeout=600, env=None):
    """`python <args>` from the repository (e.g. run_script("run.py", "task=eval", ...)), offline, its
    output captured."""
    script = [str(REPO / args[0]) if args[0].endswith(".py") else args[0], *args[1:]]
    return subprocess.run(
        [sys.executable, *script], cwd=cwd, env=env or OFFLINE_ENV, capture_output=True, text=True, timeout=timeout
    )


# For subprocess runs that must not take every core with torch's default thread count (torchrun's
# ranks, joblib's workers, long sequences of runs).
ONE_THREAD_ENV = dict(OFFLINE_ENV, OMP_NUM_THREADS="1")


# Micro models gain nothing from a second thread, which only adds synchronisation that costs dearly
# on a busy machine; every test starts with this many (CAMELS_TEST_THREADS changes it).
TEST_THREADS = int(os.environ.get("CAMELS_TEST_THREADS", "1"))

# Small sizes so the whole build takes seconds on two busy cores; the values are what matters to
# the tests (every split non-empty, a model that loads like a hub model), not its quality.
SMALL_WORLD = [
    "n_value_people=40",
    "n_value_towns=30",
    "n_value_rivers=12",
    "n_pretrain_entities=24",
    "n_qa_entities=8",
    "docs_per_pretrain_entity=2",
    "n_train_docs=12",
    "n_val_docs=6",
    "n_test_docs=14",
    "n_web_texts=8",
    "tokenizer.vocab_size=700",
    "model.n_layer=2",
    "model.n_embd=32",
    "model.n_head=2",
    "pretrain.epochs=2",
    "pretrain.doc_batch_size=8",
    "report.n_qa=8",
    "report.one_step.n_docs=2",
    "report.one_step.n_unrelated=4",
    "report.one_step.lrs=[1.0]",
    "report.stream.n_docs=2",
    "report.stream.lrs=[1.0e-3]",
    "device=cpu",
    "num_threads=1",
    "progress=false",
]


@dataclass
class TinyWorld:
    root: Path
    data_dir: Path
    base_model: Path
    overrides: list

    @property
    def dataset_cfg(self):
        """conf/dataset/tiny_world.yaml pointed at this world's CSVs."""
        from tiny_world.sanity_report import dataset_config

        return dataset_config(self.data_dir)


def world_overrides(world):
    """run.py overrides pointing a run at `world`'s base model and data."""
    return [f"base_model={world.base_model}", f"dataset.data_dir={world.data_dir}"]


def train_world_overrides(world):
    """world_overrides, and the weight model's body and the web text that meta-training reads, from `world`."""
    return [
        *world_overrides(world),
        f"model.pretrained_model={world.base_model}",
        f"dataset.web_text_csv={world.data_dir / 'web_text.csv'}",
    ]


@pytest.fixture(autouse=True)
def torch_threads():
    """Every test runs with TEST_THREADS torch threads, whatever an earlier test or the code under
    test (torch_threads=...) set, so a test's speed does not depend on the order of the tests."""
    torch.set_num_threads(TEST_THREADS)
    yield TEST_THREADS


@pytest.fixture(scope="session")
def tiny_world_small(tmp_path_factory):
    import tiny_world

    overrides = SMALL_WORLD + [f"out_dir={tmp_path_factory.mktemp('tiny_world') / 'world'}"]
    root = tiny_world.build(tiny_world.load_recipe(overrides))
    return TinyWorld(root=root, data_dir=root / "data", base_model=root / "base_model", overrides=overrides)
