"""examples/python_api.py (docs/api.md) runs on the small world: it loads a weight model, renders its
weights, adapts the base model and scores it; the adapted model it saves loads and scores better."""

import re

import pytest
from conftest import run_script


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
