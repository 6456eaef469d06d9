"""The configuration layer: config interpolations (resolvers), registered on import by every entry point.

Importing this module makes `${tiny_world:data|base_model}`, `${basename:path}`,
`${method_name:model,qa_lt_final}` and `${stream_name:split,test_path}` resolvable. It is the one
library-side place allowed to reach the tiny-world builder: resolving `${tiny_world:...}` builds
the default tiny world on first use.
"""
from pathlib import Path

from omegaconf import OmegaConf


def tiny_world_path(name):
    """Folder of the default tiny world's `name` ("data" or "base_model"), built on first use."""
    from exp_datasets import tiny_world

    return tiny_world.artefact_path(name)


def conf_dir():
    """The absolute path of conf/ (qa_conf/ reads its dataset configs from there)."""
    return str(Path(__file__).resolve().parent / "conf")


def basename(path):
    return Path(str(path)).name or str(path)


def method_name(model_name, qa_lt_final):
    """A method as the result tables name it: the weighting, with "+qa_tune" after light tuning."""
    return f"{model_name}+qa_tune" if qa_lt_final else str(model_name)


def stream_name(split, test_path):
    """The evaluation stream as run folders name it: the test_path file's stem, else the split."""
    return Path(str(test_path)).stem if test_path else str(split)


RESOLVERS = {"tiny_world": tiny_world_path, "conf_dir": conf_dir, "basename": basename, "method_name": method_name,
             "stream_name": stream_name}


def register_resolvers():
    for name, resolver in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


register_resolvers()
