"""More base models on a tiny world's data (conf/transfer_bases.yaml): another architecture, another
tokenizer, each pretrained as the world's own base model is (tiny_world.model's tokenizer training,
model and pretraining loop, on the world's pretraining documents and QA pairs), into
<world folder>/transfer_bases/<name>/. `python -m tiny_world.transfer_bases [key=value ...]`.

Each base's folder records a hash of what made it (its recipe, the world's data and base model
stages, this code and tiny_world/model.py); a base whose hash is unchanged is not rebuilt."""

import ast
import hashlib
import json
import shutil
import time
from pathlib import Path

import hydra

from plumbing.environment import REPO_ROOT
from plumbing.errors import UsageError, run_cli, usage_errors_exit
from plumbing.files import atomic_dir

SOURCES = ("tiny_world/transfer_bases.py", "tiny_world/model.py")
FOLDER = "transfer_bases"
# the files of a tokenizer written by save_pretrained (the world's, copied for tokenizer=world)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
UNK, EOS = "<unk>", "</s>"


def train_unigram_tokenizer(texts, vocab_size, model_max_length):
    """A SentencePiece-style Unigram tokenizer trained on `texts`: ▁ marks a space, and characters
    it never saw fall back to <0xHH> byte pieces (added beside the `vocab_size` trained entries)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer(models.Unigram())
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trained.train_from_iterator(
        texts,
        trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[UNK, EOS], unk_token=UNK, show_progress=False),
    )
    pieces = [tuple(p) for p in json.loads(trained.to_str())["model"]["vocab"]]
    known = {piece for piece, _ in pieces}
    # byte pieces score below every trained piece: used only for what nothing else covers
    pieces += [(f"<0x{b:02X}>", -100.0) for b in range(256) if f"<0x{b:02X}>" not in known]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,
        model_max_length=model_max_length,
    )


def make_tokenizer(recipe, texts, world_tokenizer_dir, model_max_length):
    """The base's tokenizer: the world's own (loaded from its base model's folder), or one trained on
    `texts` by the recipe's algorithm."""
    from plumbing.loading import load_tokenizer

    from . import model

    if recipe.tokenizer == "world":
        return load_tokenizer(world_tokenizer_dir)
    if recipe.tokenizer == "byte_bpe":
        return model.train_tokenizer(texts, recipe.vocab_size, model_max_length)
    return train_unigram_tokenizer(texts, recipe.vocab_size, model_max_length)


def make_llama(model_cfg, tokenizer, intermediate_size):
    """A Llama-style causal LM of the world model's sizes (hidden size, layers, heads, positions),
    its input and output embeddings tied as GPT-2's are."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.n_embd,
        intermediate_size=intermediate_size,
        num_hidden_layers=model_cfg.n_layer,
        num_attention_heads=model_cfg.n_head,
        num_key_value_heads=model_cfg.n_head,
        max_position_embeddings=model_cfg.n_positions,
        attention_dropout=model_cfg.dropout,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def make_model(recipe, model_cfg, tokenizer):
    """The base's architecture at the world model's sizes: GPT-2 as tiny_world.model makes it, or Llama."""
    from . import model

    if recipe.architecture == "gpt2":
        return model.make_model(model_cfg, tokenizer)
    return make_llama(model_cfg, tokenizer, recipe.intermediate_size or 4 * model_cfg.n_embd)


def pretraining_texts(world_root: Path):
    """The world's pretraining documents and QA pairs (questions, answers)."""
    import pandas as pd

    docs = pd.read_csv(world_root / "data" / "pretrain_docs.csv", keep_default_na=False, dtype=str)["text"].tolist()
    qa = pd.read_csv(world_root / "data" / "pretrain_qa.csv", keep_default_na=False, dtype=str)
    return docs, qa["question"].tolist(), qa["answers"].tolist()


def build_base(recipe, world_cfg, world_root: Path, target: Path, device, progress):
    """Tokenizer and pretrained model of one base into `target` (save_pretrained), with
    pretraining.json (parameters, seconds, loss curve, loss on the pretraining documents before and after)."""
    import torch

    from exp_datasets import QACollator
    from plumbing.environment import set_seed

    from . import model

    docs, questions, answers = pretraining_texts(world_root)
    started = time.time()
    # the same text the world's tokenizer was trained on
    tokenizer = make_tokenizer(
        recipe,
        docs + [f"{q} {a}" for q, a in zip(questions, answers)],
        world_root / "base_model",
        world_cfg.model.n_positions,
    )
    pretrain_cfg = world_cfg.pretrain
    collator = QACollator(
        tokenizer,
        world_cfg.model.n_positions,
        pretrain_cfg.max_question_len,
        pretrain_cfg.max_answer_len,
        qa_eos=pretrain_cfg.qa_eos,
    )
    full_docs = [tokenizer(d, verbose=False)["input_ids"] for d in docs]
    doc_sequences = [(ids[: world_cfg.model.n_positions],) * 2 for ids in full_docs]
    qa_sequences = [collator.qa_tokens(q, a) for q, a in zip(questions, answers)]
    set_seed(world_cfg.seed)
    base = make_model(recipe, world_cfg.model, tokenizer).to(device)

    def document_loss():
        with torch.no_grad():
            batches = [doc_sequences[i : i + 64] for i in range(0, len(doc_sequences), 64)]
            losses = [model.lm_loss(base, model.collate(b, tokenizer.pad_token_id)).item() for b in batches]
        return sum(losses) / len(losses)

    base.eval()
    before = document_loss()
    losses = model.pretrain(
        base, doc_sequences, qa_sequences, pretrain_cfg, tokenizer.pad_token_id, world_cfg.seed, progress
    )
    after = document_loss()
    base.to("cpu").save_pretrained(target)
    tokenizer.save_pretrained(target)
    every = max(1, len(losses) // 50)
    log = dict(
        architecture=recipe.architecture,
        tokenizer=recipe.tokenizer,
        vocab_size=len(tokenizer),
        params=sum(p.numel() for p in base.parameters()),
        seconds=round(time.time() - started, 1),
        device=str(device),
        threads=torch.get_num_threads(),
        steps=len(losses),
        mean_document_tokens=sum(map(len, full_docs)) / len(full_docs),
        document_loss_before=round(before, 4),
        document_loss_after=round(after, 4),
        loss_curve=[
            round(sum(losses[i : i + every]) / len(losses[i : i + every]), 4) for i in range(0, len(losses), every)
        ],
    )
    (target / "pretraining.json").write_text(json.dumps(log, indent=2) + "\n")
    return log


def base_hash(recipe, world_record):
    """What a base depends on: its recipe, the world's data and model stages (its text, its
    tokenizer, its pretraining options) and the code that builds it."""
    from omegaconf import OmegaConf

    source = "".join(ast.dump(ast.parse((REPO_ROOT / name).read_text())) for name in SOURCES)
    parts = [OmegaConf.to_container(recipe, resolve=True), world_record["hashes"]["model"], source]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def check_config(cfg):
    """The schema's choices and ranges for the options and every base; what ties one key to another."""
    from plumbing.schemas import check_values

    check_values(cfg)
    unknown = [name for name in cfg.build if name not in cfg.bases]
    if unknown:
        raise UsageError(
            f"build names {', '.join(unknown)}, not among bases ({', '.join(cfg.bases)}); "
            "name bases defined under `bases`"
        )
    for name, recipe in cfg.bases.items():
        check_values(recipe, f"bases.{name}.")
        if (recipe.tokenizer == "world") != (recipe.vocab_size is None):
            raise UsageError(
                f"bases.{name}: a trained tokenizer ({recipe.tokenizer}) needs vocab_size, the world's "
                "(tokenizer=world) takes vocab_size=null"
            )
        if recipe.architecture == "gpt2" and recipe.intermediate_size is not None:
            raise UsageError(
                f"bases.{name}.intermediate_size={recipe.intermediate_size}: the gpt2 architecture "
                "is the world's own, 4 x n_embd wide; use null"
            )


def base_folders(world_root: Path, names):
    """name -> <world folder>/transfer_bases/<name>."""
    return {name: world_root / FOLDER / name for name in names}


def build(cfg):
    """Build (or find current) every base of cfg.build; returns name -> its folder."""
    import torch

    import tiny_world
    from plumbing.environment import pick_device

    check_config(cfg)
    world_cfg = tiny_world.load_recipe(list(cfg.world_overrides))
    world_root = tiny_world.build(world_cfg, progress=cfg.progress)
    world_record = tiny_world.read_built(world_root)
    device = pick_device(cfg.device)
    folders = base_folders(world_root, cfg.build)
    for name, target in folders.items():
        recipe = cfg.bases[name]
        digest = base_hash(recipe, world_record)
        with tiny_world.build_lock(target):
            if _recorded_hash(target) == digest:
                print(f"transfer base {name}: current in {target}", flush=True)
                continue
            threads = torch.get_num_threads()
            if cfg.num_threads:
                torch.set_num_threads(cfg.num_threads)
            try:
                with atomic_dir(target) as tmp:
                    log = build_base(recipe, world_cfg, world_root, tmp, device, cfg.progress)
                    if recipe.tokenizer == "world":  # the world's tokenizer files, byte for byte
                        for file in TOKENIZER_FILES:
                            if (world_root / "base_model" / file).exists():
                                shutil.copy2(world_root / "base_model" / file, tmp / file)
                    record = dict(hash=digest, recipe=_plain(recipe))
                    (tmp / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
            finally:
                torch.set_num_threads(threads)
            print(
                f"transfer base {name} written to {target} in {log['seconds']:.0f}s ({log['params']} parameters; "
                f"document loss {log['document_loss_before']:.2f} -> {log['document_loss_after']:.2f})",
                flush=True,
            )
    return folders


def _recorded_hash(folder: Path):
    try:
        return json.loads((folder / "recipe.json").read_text()).get("hash")
    except (OSError, ValueError):
        return None


def _plain(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


@hydra.main(version_base=None, config_path=str(REPO_ROOT / "conf"), config_name="transfer_bases")
def main(cfg):
    with usage_errors_exit():
        build(cfg)


if __name__ == "__main__":
    from plumbing import schemas  # noqa: F401 - registers transfer_bases_schema

    run_cli(main)
