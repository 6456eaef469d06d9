"""Hostile inputs, second pass: planted and damaged files read back by a rerun, ragged or mistyped
input files, options that cannot work, tokenizers with added tokens, paths that are files, and a full
disk while writing. Each probe ends in a correct result or one line (UsageError, exit 2)."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import OFFLINE_ENV, compose, run_script
from omegaconf import OmegaConf
from test_eval import compose_config as eval_config
from test_meta_train import train_config
from test_reliability import WritesAFile, one_line_error
from test_train_qa import run_overrides as qa_overrides

import adaptation
import evaluation
import meta_train
import report
import train_qa
import weight_model as W
from exp_datasets import QACollator, load_split
from plumbing import environment, errors, files
from plumbing.errors import UsageError
from plumbing.loading import load_causal_lm, load_tokenizer
from subroutines import AdaptationSettings, weighted_train
from util import f1_score

# ---------------------------------------------------------------------------------------------
# Files read back by a rerun


@pytest.fixture(scope="module")
def finished_qa_run(tiny_world_small, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("qa_run")
    cfg = qa_config(qa_overrides(tiny_world_small, batch_size=8, val_steps=2, max_steps=2, max_val_questions=4))
    train_qa.train_qa(cfg, run_dir)
    return cfg, run_dir


def qa_config(overrides):
    return compose("qa_conf", overrides)


def test_planted_resume_state_of_qa_tuning_never_runs(finished_qa_run, tmp_path):
    cfg, run_dir = finished_qa_run
    done = (run_dir / train_qa.DONE).read_text()
    marker = tmp_path / "marker"
    try:
        (run_dir / train_qa.DONE).unlink()
        torch.save({"model": WritesAFile(marker)}, run_dir / train_qa.RESUME_STATE)
        message = one_line_error(train_qa.train_qa, cfg, run_dir)
        assert not marker.exists(), "the pickle's payload ran"
        assert str(run_dir / train_qa.RESUME_STATE) in message and "delete it" in message
        # tensors only, but not a state this program wrote: named, not a KeyError
        torch.save({"model": {}, "step": 3}, run_dir / train_qa.RESUME_STATE)
        message = one_line_error(train_qa.train_qa, cfg, run_dir)
        assert "resume.pt lacks 'optimizer'" in message and "delete it" in message
    finally:
        (run_dir / train_qa.RESUME_STATE).unlink(missing_ok=True)
        (run_dir / train_qa.DONE).write_text(done)


@pytest.mark.parametrize(
    "content,problem",
    [
        ('{"history": [{"st', "is not valid JSON"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"best": {}}', "has no 'history' field"),
    ],
)
def test_damaged_completion_record_and_options_file_are_one_line(finished_qa_run, content, problem):
    cfg, run_dir = finished_qa_run
    # an options file holding another object is another run's, refused as such (test_reliability)
    for name in (train_qa.DONE, "run_options.json") if "history" in content or "[" in content else (train_qa.DONE,):
        saved = (run_dir / name).read_text()
        try:
            (run_dir / name).write_text(content)
            message = one_line_error(train_qa.train_qa, cfg, run_dir)
            assert str(run_dir / name) in message and "overwrite=true" in message
            assert problem in message
        finally:
            (run_dir / name).write_text(saved)


# ---------------------------------------------------------------------------------------------
# Input files parsed strictly


def streamingqa(tmp_path, text):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / "test.csv").write_text(text)
    cfg = OmegaConf.create(
        dict(name="streamingqa", data_dir=str(folder), files={"test": "test.csv"}, capitalize_answers=False)
    )
    return cfg, folder / "test.csv"


@pytest.mark.parametrize(
    "text,where,cause",
    [
        # every row has 5 fields: pandas took the first two as an index and read shifted columns
        ("text,question,answers\nA doc,Q?,a,b,c\nB doc,R?,d,e,f\n", "line 2", "has 5 fields but the header has 3"),
        # only the first row is ragged
        ("text,question,answers\nA doc,Q?,a,b,c\nB doc,R?,d\n", "line 2", "has 5 fields but the header has 3"),
        # a later row lacks a field; a quoted field over two lines counts as two lines
        ('text,question,answers\n"A doc\nover two lines",Q?,a\nB doc,R?\n', "line 4", "column 'answers' is missing"),
        ("text,question,answers,question\nA doc,Q?,a,R?\n", "", "names column 'question' twice"),
        ('text,question,answers\nA doc,Q?,"[""maps"", 3]"\n', "line 2, column 'answers'", "not a list of strings"),
        (
            'text,question,answers\nA doc,Q?,a\nB doc,R?,"[""maps"""\n',
            "line 3, column 'answers'",
            "not a list of strings",
        ),
    ],
)
def test_malformed_csv_names_file_line_and_cause(tmp_path, text, where, cause):
    cfg, path = streamingqa(tmp_path, text)
    message = one_line_error(load_split, cfg, "test")
    assert str(path) in message and where in message and cause in message


def test_answers_as_json_list_or_backslash_alternatives_are_all_scored(tmp_path):
    cfg, _ = streamingqa(
        tmp_path, 'text,question,answers\nA doc,Q?,"[""maps"", ""other answer""]"\nB doc,R?,maps\\other answer\n'
    )
    as_list, as_backslash = load_split(cfg, "test")
    for example in (as_list, as_backslash):
        assert example.answers == ["maps", "other answer"] and example.answer == "maps"
        # a prediction matching the second alternative scores 1, as SQuAD's max over golds
        assert max(f1_score("other answer", gold) for gold in example.golds()) == 1.0


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    "bad,problem",
    [
        ({"answers": "Paris"}, "field 'answers' is not"),
        ({"answers": {"text": "Paris", "answer_start": [0]}}, "field 'answers' is not"),
        ({"question": 7}, "field 'question' is not text"),
    ],
)
def test_squad_jsonl_with_malformed_fields_names_the_record(tmp_path, bad, problem):
    good = dict(
        title="T",
        context="Paris is in France.",
        question="Where is Paris?",
        answers={"text": ["France"], "answer_start": [12]},
    )
    path = write_jsonl(
        tmp_path / "squad.jsonl",
        [good, dict(good, **bad)] if "question" not in bad else [dict(good, **bad), dict(good, **bad)],
    )
    cfg = OmegaConf.create(dict(name="squad", capitalize_answers=True, shuffle_seed=0))
    message = one_line_error(load_split, cfg, "test", str(path))
    record = "record 1" if "question" in bad else "record 2"
    assert f"SQuAD file {path}, {record}: {problem}" in message


# ---------------------------------------------------------------------------------------------
# Options that cannot work are refused before any work, with the real reason


@pytest.mark.parametrize(
    "override,message",
    [
        ("seed=-5", "seed=-5 is invalid; a seed must be an integer from 0 to 4294967295"),
        ("seed=4294967296", "seed=4294967296 is invalid"),
        ("device=banana", "device=banana is invalid; use auto, cpu, cuda, cuda:<index> or mps"),
        ("eval=[]", "eval=[] is invalid; nothing would be scored"),
        ("dataset.max_text_len=1", "dataset.max_text_len=1 is invalid; a document needs at least 2 tokens"),
    ],
)
def test_options_that_cannot_work_are_refused_before_any_work(tiny_world_small, tmp_path, override, message):
    cfg = eval_config(tiny_world_small, [override])
    assert message in one_line_error(evaluation.evaluate, cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists(), "refused before the run folder was claimed"
    if override.startswith(("seed", "device")):
        cfg = qa_config(qa_overrides(tiny_world_small, **dict([override.split("=")])))
        assert message in one_line_error(train_qa.check_config, cfg)


def test_a_device_this_machine_lacks_is_one_line():
    if not torch.cuda.is_available():
        assert "CUDA is not available" in one_line_error(environment.pick_device, "cuda:0")
    else:
        assert "does not exist" in one_line_error(environment.pick_device, f"cuda:{torch.cuda.device_count()}")


class NanWeights(torch.nn.Module):
    """A weight model whose every weight is NaN: the loss is NaN before any update, whatever the lr."""

    adapts = True

    def forward(self, ids, mask):
        return torch.full(ids.shape, float("nan"))


def test_documents_cut_below_two_tokens_are_refused_and_a_nan_loss_before_any_update_is_no_divergence(tiny_world_small):
    tokenizer = load_tokenizer(tiny_world_small.base_model)
    assert "at least 2 tokens" in one_line_error(QACollator, tokenizer, 1)
    assert "at least 2 tokens" in one_line_error(QACollator, tokenizer, 64, 8, 4, False, 1)

    model = load_causal_lm(tiny_world_small.base_model)
    texts = [e.text for e in load_split(tiny_world_small.dataset_cfg, "test")][:2]
    result = weighted_train(
        model,
        NanWeights(),
        texts,
        QACollator(tokenizer, max_text_len=32),
        "cpu",
        AdaptationSettings(lr=1e-12),
        progress=False,
    )
    assert result["diverged"]["before_any_update"] is True and result["n_steps"] == 0


def test_nan_loss_before_any_update_is_not_blamed_on_the_learning_rate(tiny_world_small, tmp_path, monkeypatch):
    monkeypatch.setattr(adaptation, "configured_weight_model", lambda *args: NanWeights())
    cfg = eval_config(tiny_world_small, ["lr=1e-12", "downsample_to=2", "eval=[ppl]"])
    message = one_line_error(evaluation.evaluate, cfg, tmp_path / "run")
    assert "before any update, so no learning rate causes it" in message and "lower lr" not in message
    assert not (tmp_path / "run" / "summary.json").exists(), "not marked diverged"


# ---------------------------------------------------------------------------------------------
# Vocabulary checks cover added tokens


@pytest.fixture(scope="module")
def tokenizer_with_added_tokens(tiny_world_small, tmp_path_factory):
    tokenizer = load_tokenizer(tiny_world_small.base_model)
    assert tokenizer.add_tokens([f"<extra_{i}>" for i in range(500)]) == 500
    folder = tmp_path_factory.mktemp("tok") / "added"
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def camels_folder(tiny_world_small, tmp_path_factory):
    """A saved (untrained) CaMeLS weight model on the small world's body."""
    cfg = eval_config(tiny_world_small, ["model=CaMeLS", f"model.pretrained_model={tiny_world_small.base_model}"])
    folder = tmp_path_factory.mktemp("wm") / "camels"
    W.build_weight_model(cfg.model, load_tokenizer(tiny_world_small.base_model)).save(folder)
    return folder


def test_added_tokens_beyond_the_embeddings_are_refused(
    tiny_world_small, camels_folder, tokenizer_with_added_tokens, tmp_path
):
    tokenizer = load_tokenizer(tokenizer_with_added_tokens)
    n_embeddings = W.load_weight_model(camels_folder).backbone.get_input_embeddings().num_embeddings
    assert len(tokenizer) > n_embeddings and W.vocabulary_fingerprint(tokenizer) == W.vocabulary_fingerprint(
        load_tokenizer(tiny_world_small.base_model)
    ), "passes the fingerprint"
    # the weight model reads such a base tokenizer's documents with its own tokenizer (weights across tokenizers)
    assert W.load_weight_model(camels_folder, tokenizer).base_tokenizer is tokenizer
    cfg = eval_config(
        tiny_world_small, [f"tokenizer_name={tokenizer_with_added_tokens}", "eval=[ppl]", "downsample_to=2"]
    )
    message = one_line_error(evaluation.evaluate, cfg, tmp_path / "plain")
    assert "embeds 700 tokens" in message and "501 added tokens" in message
    cfg = eval_config(
        tiny_world_small,
        [
            f"tokenizer_name={tokenizer_with_added_tokens}",
            "model=CaMeLS",
            f"weight_model_path={camels_folder}",
            "eval=[ppl]",
            "downsample_to=2",
        ],
    )
    assert "501 added tokens" in one_line_error(evaluation.evaluate, cfg, tmp_path / "camels")


# ---------------------------------------------------------------------------------------------
# Paths that are files


def test_cache_or_output_paths_that_are_files(tiny_world_small, tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    monkeypatch.setenv("CAMELS_CACHE_DIR", str(a_file))
    message = one_line_error(environment.cache_dir)
    assert f"CAMELS_CACHE_DIR {a_file} cannot be a folder" in message
    assert "cache_dir" in one_line_error(environment.cache_dir, str(a_file / "below"))
    monkeypatch.delenv("CAMELS_CACHE_DIR")
    cfg = train_config(tiny_world_small, a_file / "run", "max_outer_steps=1")
    assert f"output_dir {a_file / 'run'} cannot be a folder: {a_file} is an existing file" in one_line_error(
        meta_train.check_config, cfg
    )


# ---------------------------------------------------------------------------------------------
# A full disk while writing


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs the /dev/full device")
def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    # a real full device: torch's own writer would report it as an unspecific RuntimeError
    with pytest.raises(OSError) as raised:
        files.save_tensors({"a": torch.zeros(100_000)}, "/dev/full")
    assert raised.value.errno == errno.ENOSPC
    message = one_line_error(files.append_line, "row", "/dev/full")
    assert message.startswith("cannot write /dev/full (No space left on device); free disk space")
    monkeypatch.setattr(files.os, "replace", no_space)
    for write in (
        lambda: files.atomic_write_text("x", tmp_path / "a.json"),
        lambda: files.atomic_torch_save({"a": torch.zeros(3)}, tmp_path / "b.pt"),
    ):
        message = one_line_error(write)
        assert "cannot write" in message and "No space left on device" in message
    with pytest.raises(UsageError, match="cannot write .*folder"):
        with files.atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "f").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no temporary file or folder is left"


def test_full_disk_during_evaluation_leaves_no_summary_and_the_rerun_is_exact(tiny_world_small, tmp_path, monkeypatch):
    options = ["eval=[ppl]", "downsample_to=2", "lr=1e-3"]
    reference = evaluation.evaluate(eval_config(tiny_world_small, options), tmp_path / "reference")
    real_write = files.atomic_write_text

    def full_at_summary(text, path):
        if Path(path).name == "summary.json":
            with files.atomic_path(path) as tmp:
                no_space(tmp)
        real_write(text, path)

    monkeypatch.setattr(files, "atomic_write_text", full_at_summary)
    message = one_line_error(evaluation.evaluate, eval_config(tiny_world_small, options), tmp_path / "run")
    assert f"cannot write {tmp_path / 'run' / 'summary.json'} (No space left on device)" in message
    assert not (tmp_path / "run" / "summary.json").exists()
    with pytest.raises(UsageError, match="no summary.json"):
        report.load_runs([tmp_path / "run"])
    monkeypatch.setattr(files, "atomic_write_text", real_write)
    again = evaluation.evaluate(eval_config(tiny_world_small, options), tmp_path / "run")
    assert {k: again[k] for k in ("em", "f1", "nll")} == {k: reference[k] for k in ("em", "f1", "nll")}


def test_full_disk_during_meta_training_is_one_line(tiny_world_small, tmp_path, monkeypatch):
    from test_reliability import META_KNOBS

    monkeypatch.setattr(files, "save_tensors", no_space)
    cfg = train_config(tiny_world_small, tmp_path / "run", "max_outer_steps=1", "val_steps=1", *META_KNOBS)
    message = one_line_error(meta_train.train, cfg)
    assert "cannot write" in message and "checkpoints" in message and "No space left on device" in message
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()


def test_an_os_error_naming_a_file_is_one_line_from_run_cli(capsys):
    def main():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/some/out/file")

    with pytest.raises(SystemExit) as raised:
        errors.run_cli(main)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/some/out/file" in err and "No space left" in err


# ---------------------------------------------------------------------------------------------
# report.py on damaged summaries and an --out that is a file


@pytest.mark.parametrize(
    "content,problem",
    [('{"method": "uniform", "em"', "is not valid JSON"), ('["uniform"]', "holds a JSON list, not an object")],
)
def test_report_on_a_damaged_summary_is_one_line(tmp_path, content, problem):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(content)
    message = one_line_error(report.main, [str(tmp_path)])
    assert str(tmp_path / "run" / "summary.json") in message and problem in message


def test_report_out_on_an_existing_file_is_one_line(tmp_path):
    (tmp_path / "out").write_text("x")
    message = one_line_error(report.main, [str(tmp_path), "--out", str(tmp_path / "out")])
    assert f"--out {tmp_path / 'out'} cannot be a folder" in message


# ---------------------------------------------------------------------------------------------
# The command lines: one line, exit 2, no traceback


@pytest.mark.slow
def test_command_line_probes_end_in_one_line(tiny_world_small, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = [
        f"base_model={tiny_world_small.base_model}",
        f"dataset.data_dir={tiny_world_small.data_dir}",
        "dataset=tiny_world",
        "task=eval",
    ]
    probes = {
        "device=banana": [*base, "device=banana"],
        "seed=-5": [*base, "seed=-5"],
        "run folder is a file": [*base, f"hydra.run.dir={a_file}"],
        "cache_dir is a file": [*base, f"cache_dir={a_file}"],
    }
    for name, args in probes.items():
        done = run_script("run.py", *args, cwd=tmp_path)
        assert done.returncode == 2, (name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, (name, done.stderr)
    env = dict(OFFLINE_ENV, CAMELS_CACHE_DIR=str(a_file))
    done = run_script("run.py", "task=eval", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "CAMELS_CACHE_DIR" in done.stderr and "Traceback" not in done.stderr, done.stderr
    (tmp_path / "run" / "summary.json").parent.mkdir()
    (tmp_path / "run" / "summary.json").write_text("{")
    done = run_script("report.py", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "not valid JSON" in done.stderr, done.stderr
