"""Help that helps: every entry point's --help describes its tasks, key options and an example; no
--help/--shell-completion form ends in a traceback; an unknown option name gets the closest known names."""

import pytest
from conftest import run_script

from plumbing import errors


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, expected",
    [
        (
            "run.py",
            [
                *("task=...", "eval ", "adapt ", "train ", "lr=", "(1e-4)", "python run.py task=adapt documents="),
                "\nmodel: CaMeLS, TFIDF, excess_loss, none, oracle, ssm, surprisal, uniform\n",
            ],
        ),
        (
            "train_qa.py",
            [
                *("QA pre-tuning", "stop_k", "(2.5e-5, 32, 2", "python train_qa.py dataset="),
                "\ndataset: archivalqa, squad, streamingqa, tiny_world\n",
            ],
        ),
        ("demo.py", ["in miniature", "parallel_jobs", "(outputs/demo)", "python demo.py "]),
    ],
)
def test_help_describes_the_tasks_options_and_an_example(script, expected):
    result = run_script(script, "--help", timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert all(text in result.stdout for text in expected), result.stdout
    assert "schema/" not in result.stdout  # the groups a user picks, not the schemas behind them
    for args in (["--shell-completion"], ["-sc"]):
        result = run_script(script, *args, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "install=SHELL" in result.stderr
    result = run_script(script, "--shell-completion", "install=bash", timeout=120)
    assert result.returncode == 0 and "complete" in result.stdout


@pytest.mark.slow
def test_a_misspelt_option_gets_the_closest_names():
    result = run_script("run.py", "modle=ssm", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: modle is not an option; did you mean model?"]


def test_composition_error_suggests_known_names(monkeypatch):
    from hydra.errors import ConfigCompositionException

    monkeypatch.setattr("sys.argv", ["run.py"])
    message = "Could not override '{}'.\nTo append to your config use +{}=1"
    suggest = lambda key: errors.composition_error(ConfigCompositionException(message.format(key, key)))  # noqa: E731
    assert suggest("modle") == "modle is not an option; did you mean model?"
    assert suggest("grad_clip_tresh").startswith("grad_clip_tresh is not an option; did you mean grad_clip_thresh")
    assert suggest("model.head_widht") == "model.head_widht is not an option; did you mean model.head_width?"
    assert suggest("dataset.data_dri").startswith("dataset.data_dri is not an option; did you mean dataset.data_dir")
    assert suggest("qqqqzz") == "qqqqzz is not an option; see --help for the options"
    monkeypatch.setattr("sys.argv", ["train_qa.py"])
    assert "did you mean load_state_dict_path" in suggest("load_state_dict")
