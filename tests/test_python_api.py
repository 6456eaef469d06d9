"""examples/python_api.py (docs/api.md) runs on the small world: it loads a weight model, renders its
weights, adapts the base model and scores it; the adapted model it saves loads and scores better."""

import re

import pytest
from conftest import REPO, run_script

import weight_model as W


@pytest.mark.slow
def test_the_python_api_example_runs(tiny_world_small, tmp_path):
    result = run_script(
        "examples/python_api.py",
        "--base-model",
        str(tiny_world_small.base_model),
        "--documents",
        str(tiny_world_small.data_dir / "test.csv"),
        "--lr",
        "1e-3",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "heaviest tokens of the first document" in result.stdout
    steps = re.search(r"adapted on (\d+) documents: (\d+) steps", result.stdout)
    assert steps and steps[1] == steps[2] and int(steps[1]) > 0
    before, after = map(float, re.search(r"answer NLL ([\d.]+) -> ([\d.]+)", result.stdout).groups())
    assert after < before
    for name in ("weights.html", "weights.png", "weight_model/tokenizer", "adapted/config.json"):
        assert (tmp_path / "out" / name).exists(), name


def test_the_readme_python_example_runs_as_written(tiny_world_small, tmp_path, monkeypatch, capsys):
    """The README's Python block, its two inputs (the first two lines) pointed at the small world's base
    model and a weight model saved from it; every other line runs as written."""
    from omegaconf import OmegaConf

    from plumbing.loading import load_tokenizer

    block = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)[1]
    first, second, rest = block.split("\n", 2)
    assert first.startswith("base = ") and second.startswith("camels = ")
    camels = W.build_weight_model(
        OmegaConf.create({"name": "CaMeLS", "pretrained_model": str(tiny_world_small.base_model)}),
        load_tokenizer(tiny_world_small.base_model),
    )
    camels.save_pretrained(tmp_path / "camels")
    monkeypatch.chdir(tmp_path)
    exec(f"base = {str(tiny_world_small.base_model)!r}\ncamels = {str(tmp_path / 'camels')!r}\n{rest}", {})
    weights = [float(w) for w in re.findall(r"[-\d.]+(?:e-?\d+)?", capsys.readouterr().out)]
    assert weights and all(w >= 0 for w in weights)
    assert (tmp_path / "adapted" / "config.json").is_file()
