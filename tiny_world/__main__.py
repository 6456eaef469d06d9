"""`python -m tiny_world [key=value ...]`: build the tiny world (recipe conf/tiny_world.yaml)."""

import hydra

from plumbing import schemas  # noqa: F401 - registers tiny_world_schema
from plumbing.environment import REPO_ROOT
from plumbing.errors import run_cli, usage_errors_exit

from . import build


@hydra.main(version_base=None, config_path=str(REPO_ROOT / "conf"), config_name="tiny_world")
def main(cfg):
    with usage_errors_exit():
        build(cfg)


if __name__ == "__main__":
    run_cli(main)
