"""`python -m exp_datasets.tiny_world [key=value ...]`: build the tiny world (recipe conf/tiny_world.yaml)."""
import hydra

from util import REPO_ROOT, run_cli

from . import build


@hydra.main(version_base=None, config_path=str(REPO_ROOT / "conf"), config_name="tiny_world")
def main(cfg):
    build(cfg)


if __name__ == "__main__":
    run_cli(main)
