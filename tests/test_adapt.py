"""run.py task=adapt (adaptation.py): documents from a .txt folder, a CSV, a JSONL file or a dataset split;
the adapted model loads with from_pretrained and has a lower loss on its documents; task=eval adapts
the same model with the same options; run folders named from the setting; a failure before the first
step leaves nothing that blocks the corrected command."""

import hashlib
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import compose, run_script
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

import adaptation
import evaluation
from exp_datasets import load_split, make_stream
from plumbing import errors, run_folder, schemas


def world_overrides(world, task="adapt"):
    return [
        f"task={task}",
        f"base_model={world.base_model}",
        f"dataset.data_dir={world.data_dir}",
        "device=cpu",
        "progress=false",
        "torch_threads=1",
    ]


def stream_documents(world, n=3):
    stream = make_stream(load_split(world.dataset_cfg, "test"), -1, 0)
    return [document.text for document in stream[:n]]


def mean_token_loss(model, tokenizer, text, max_len):
    """Hand-computed mean next-token NLL of one document cut to `max_len` tokens."""
    ids = torch.tensor([tokenizer(text)["input_ids"][:max_len]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    return F.cross_entropy(logits[:-1].float(), ids[0, 1:]).item()


def adapted_folder(cwd):
    (summary,) = list((cwd / "outputs" / "adapt").rglob("summary.json"))
    return summary.parent


def check_adapted_run(run_dir, base_model, texts, names, max_len):
    """The adapted model loads with from_pretrained, documents.csv holds the losses computed here by hand,
    and the adapted model's loss on every document is lower than the base model's."""
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    adapted = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    base = AutoModelForCausalLM.from_pretrained(base_model).eval()
    table = pd.read_csv(run_dir / "documents.csv", keep_default_na=False)
    assert list(table["index"]) == list(range(len(texts))) and list(table["name"]) == names
    after = [mean_token_loss(adapted, tokenizer, t, max_len) for t in texts]
    before = [mean_token_loss(base, tokenizer, t, max_len) for t in texts]
    assert table["loss_after"].tolist() == pytest.approx(after, rel=1e-4)
    assert table["loss_base"].tolist() == pytest.approx(before, rel=1e-4)
    assert table["loss_before_step"].iloc[0] == pytest.approx(before[0], rel=1e-4)  # nothing adapted before it
    assert all(a < b for a, b in zip(after, before))
    assert (run_dir / "weights.png").is_file() and (run_dir / "weights.html").is_file()


@pytest.mark.slow
def test_adapt_on_a_text_folder_and_a_csv_writes_a_loadable_better_model(tiny_world_small, tmp_path):
    world = tiny_world_small
    texts = stream_documents(world)
    folder = tmp_path / "docs"
    folder.mkdir()
    names = [f"{i:02d}_note.txt" for i in range(len(texts))]
    for name, text in zip(reversed(names), reversed(texts)):  # written out of order: read sorted by name
        (folder / name).write_text(text)
    common = [*world_overrides(world), "lr=1e-3"]
    result = run_script("run.py", *common, f"documents={folder}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = adapted_folder(tmp_path)
    assert run_dir.relative_to(tmp_path).parts[:4] == (
        "outputs",
        "adapt",
        f"docs-{hashlib.sha256(str(folder).encode()).hexdigest()[:6]}",
        "uniform-lr0.001-seed42",
    )
    check_adapted_run(run_dir, world.base_model, texts, names, max_len=256)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_documents"] == len(texts) and summary["n_steps"] == len(texts)

    stamp = (run_dir / "model" / "model.safetensors").stat().st_mtime_ns
    again = run_script("run.py", *common, f"documents={folder}", cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout + again.stderr
    assert (run_dir / "model" / "model.safetensors").stat().st_mtime_ns == stamp

    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    pd.DataFrame({"text": texts}).to_csv(csv_dir / "notes.csv", index=False)
    result = run_script("run.py", *common, "documents=notes.csv", cwd=csv_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    check_adapted_run(
        adapted_folder(csv_dir), world.base_model, texts, [" ".join(t.split()[:8]) + " …" for t in texts], max_len=256
    )


@pytest.mark.slow
def test_adapt_a_random_gpt2_with_its_own_tokenizer_from_jsonl(tmp_path):
    """Any causal LM folder with its tokenizer: a random GPT-2 of a byte-level BPE of its own."""
    from test_weight_model import byte_level_tokenizer

    texts = [f"Report {i}: the river Aldeno floods the town of Merrow every {i + 2} years in spring." for i in range(4)]
    tokenizer = byte_level_tokenizer(texts * 3, vocab_size=300)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=48, n_embd=32, n_layer=2, n_head=2))
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    result = run_script(
        "run.py",
        "task=adapt",
        f"base_model={tmp_path / 'gpt2'}",
        "documents=docs.jsonl",
        "lr=3e-3",
        "device=cpu",
        "progress=false",
        "torch_threads=1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    check_adapted_run(
        adapted_folder(tmp_path), tmp_path / "gpt2", texts, [" ".join(t.split()[:8]) + " …" for t in texts], max_len=48
    )


def test_task_adapt_adapts_the_model_task_eval_adapts(tiny_world_small, tmp_path, monkeypatch):
    """Same options, same stream (a dataset split): the model task=adapt saves equals, parameter for
    parameter, the model task=eval scores."""
    world = tiny_world_small
    options = [
        "lr=3e-3",
        "downsample_to=3",
        "batch_size=2",
        "grad_acc_steps=1",
        "optimizer=adam",
        "seed=3",
        "grad_clip_thresh=0.5",
    ]
    adapted_by_eval = {}
    shared = adaptation.adapt_on_stream

    def keep_the_adapted_model(cfg, parts, *args, **kwargs):
        result = shared(cfg, parts, *args, **kwargs)
        adapted_by_eval.update({k: v.clone() for k, v in parts.base_model.state_dict().items()})
        return result

    monkeypatch.setattr(evaluation, "adapt_on_stream", keep_the_adapted_model)
    eval_cfg = compose("conf", [*world_overrides(world, "eval"), *options, "eval=[ppl]"])
    evaluation.evaluate(eval_cfg, tmp_path / "eval")
    monkeypatch.undo()
    adapt_cfg = compose("conf", [*world_overrides(world), *options, "render_documents=0"])
    summary = adaptation.run_adapt(adapt_cfg, tmp_path / "adapt")
    assert summary["n_documents"] == 3 and summary["n_steps"] == 2
    adapted = AutoModelForCausalLM.from_pretrained(tmp_path / "adapt" / "model").state_dict()
    base = AutoModelForCausalLM.from_pretrained(world.base_model).state_dict()
    assert adapted.keys() == adapted_by_eval.keys()
    assert all(torch.equal(adapted[k], adapted_by_eval[k]) for k in adapted)
    assert not all(torch.equal(adapted[k], base[k]) for k in adapted), "the stream changed the model"


def test_bad_inputs_fail_with_one_line_and_claim_no_folder(tiny_world_small, tmp_path):
    world = tiny_world_small
    (tmp_path / "notes.txt").write_text("a document")
    (tmp_path / "empty").mkdir()
    pd.DataFrame({"body": ["x"]}).to_csv(tmp_path / "no_text.csv", index=False)
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{not json\n')
    cases = {
        "oracle": (["model=oracle"], "model=oracle weighs the answers"),
        "missing": ([f"documents={tmp_path / 'nope.csv'}"], "does not exist"),
        "suffix": ([f"documents={tmp_path / 'notes.txt'}"], "neither a .csv nor a .jsonl"),
        "empty_folder": ([f"documents={tmp_path / 'empty'}"], "holds no .txt files"),
        "no_text": ([f"documents={tmp_path / 'no_text.csv'}"], "no column 'text'"),
        "jsonl": ([f"documents={tmp_path / 'broken.jsonl'}"], "is not JSON lines"),
        "base_model": (["base_model=/nowhere/model"], "cannot load"),
    }
    for name, (overrides, message) in cases.items():
        with pytest.raises(errors.UsageError) as caught:
            adaptation.run_adapt(compose("conf", [*world_overrides(world), *overrides]), tmp_path / name)
        assert message in str(caught.value) and "\n" not in str(caught.value), name
        assert not (tmp_path / name / run_folder.OPTIONS_FILE).exists(), name


def test_an_evaluation_failing_while_loading_leaves_no_claim(tiny_world_small, tmp_path):
    """A wrong data_dir fails before the first step; the corrected command (same folder) then runs."""
    world = tiny_world_small
    overrides = [*world_overrides(world, "eval"), "eval=[ppl]", "downsample_to=2", "save_state_every=null"]
    with pytest.raises(errors.UsageError):
        evaluation.evaluate(compose("conf", [*overrides, f"dataset.data_dir={tmp_path / 'nowhere'}"]), tmp_path / "run")
    assert not (tmp_path / "run" / run_folder.OPTIONS_FILE).exists()
    assert evaluation.evaluate(compose("conf", overrides), tmp_path / "run")["n_documents"] == 2


def test_run_folder_labels(tmp_path, monkeypatch):
    """Hub names stay as they are; a local path is its last two parts and a hash of its absolute path;
    a base model's state dict and a learned weighting's checkpoint are part of the label."""
    monkeypatch.chdir(tmp_path)
    for world in ("world_a", "world_b"):
        (tmp_path / world / "base_model").mkdir(parents=True)
    digest = lambda path: hashlib.sha256(str(path).encode()).hexdigest()[:6]  # noqa: E731
    assert schemas.path_label("EleutherAI/gpt-neo-125m") == "EleutherAI_gpt-neo-125m"
    assert schemas.path_label("world_a/base_model") == f"world_a_base_model-{digest(tmp_path / 'world_a/base_model')}"
    assert schemas.path_label("world_a/base_model") != schemas.path_label("world_b/base_model")
    cfg = compose("conf", ["task=eval", "base_model=world_a/base_model", "base_model_state_dict=qa/lowest_nll.pt"])
    assert schemas.base_label(cfg.base_model, _root_=cfg) == (
        f"world_a_base_model-{digest(tmp_path / 'world_a/base_model')}+qa_lowest_nll.pt-"
        f"{digest(tmp_path / 'qa/lowest_nll.pt')}"
    )
    assert schemas.weights_label("uniform", "ckpt/best") == ""
    assert schemas.weights_label("CaMeLS", "./ckpt/best") == f"@ckpt_best-{digest(tmp_path / 'ckpt/best')}"
    assert schemas.source_name(None, "tiny_world", "val", None, 5) == "tiny_world-val-ds5"
