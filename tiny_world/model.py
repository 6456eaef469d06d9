"""The tiny world's tokenizer and base model: byte-level BPE trained on the pretraining split, and
a GPT-2 causal LM pretrained on its documents (each read as its own sequence from position 0, as
online adaptation later reads them) mixed with QA pairs formatted by QACollator.qa_tokens."""

import math
import random

import torch
from tqdm import tqdm

EOS = "<|endoftext|>"


def train_tokenizer(texts, vocab_size, model_max_length):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return GPT2TokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=model_max_length,
    )


def make_model(model_cfg, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=model_cfg.n_positions,
        n_embd=model_cfg.n_embd,
        n_layer=model_cfg.n_layer,
        n_head=model_cfg.n_head,
        resid_pdrop=model_cfg.dropout,
        activation_function=model_cfg.activation,
        embd_pdrop=model_cfg.dropout,
        attn_pdrop=model_cfg.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config)


def length_batches(sequences, batch_size, rng):
    """Batches of similar length (little padding), in random order."""
    order = list(range(len(sequences)))
    rng.shuffle(order)
    window = batch_size * 32  # sort within windows of 32 batches: little padding, still well mixed
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(sequences[i][0]))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(sequences, pad_id):
    """(ids, labels) pairs -> ids, mask, labels tensors, right-padded."""
    from exp_datasets import pad

    ids, mask = pad([s[0] for s in sequences], pad_id)
    labels, _ = pad([s[1] for s in sequences], -100)
    return ids, mask, labels


def lm_loss(model, batch):
    ids, mask, labels = (t.to(model.device) for t in batch)
    logits = model(input_ids=ids, attention_mask=mask).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100)


def pretrain(model, doc_sequences, qa_sequences, train_cfg, pad_id, seed, progress=True):
    """AdamW with warm-up and cosine decay; every step sees a batch of documents and a batch of QA
    pairs (the QA list is cycled so it is covered about once per pass over the documents)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    steps_per_epoch = math.ceil(len(doc_sequences) / train_cfg.doc_batch_size)
    total = steps_per_epoch * train_cfg.epochs
    qa_batch_size = max(1, math.ceil(len(qa_sequences) / steps_per_epoch)) if qa_sequences else 0
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, betas=tuple(train_cfg.betas)
    )
    warmup = max(1, int(train_cfg.warmup_fraction * total))

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        progress_frac = (step - warmup) / max(1, total - warmup)
        return train_cfg.final_lr_fraction + (1 - train_cfg.final_lr_fraction) * 0.5 * (
            1 + math.cos(math.pi * progress_frac)
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    bar = tqdm(total=total, desc="pretraining base model", disable=not progress, mininterval=2)
    qa_order = []
    history = []
    for _ in range(train_cfg.epochs):
        for doc_batch in length_batches(doc_sequences, train_cfg.doc_batch_size, rng):
            loss = lm_loss(model, collate([doc_sequences[i] for i in doc_batch], pad_id))
            if qa_batch_size:
                if len(qa_order) < qa_batch_size:
                    qa_order += rng.sample(range(len(qa_sequences)), len(qa_sequences))
                picked, qa_order = qa_order[:qa_batch_size], qa_order[qa_batch_size:]
                loss = loss + train_cfg.qa_loss_weight * lm_loss(
                    model, collate([qa_sequences[i] for i in picked], pad_id)
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            history.append(loss.item())
            bar.update()
            if bar.n % 50 == 0:
                bar.set_postfix(loss=f"{sum(history[-50:]) / len(history[-50:]):.3f}")
    bar.close()
    model.eval()
    return history


def build_model(cfg, folder, progress=True):
    """The model stage of the build: tokenizer and pretrained base model into folder/base_model."""
    import json
    import time

    import pandas as pd

    from exp_datasets import QACollator
    from plumbing.environment import pick_device, set_seed

    device = pick_device(cfg.get("device", "auto"))
    train_cfg = cfg.pretrain
    docs = pd.read_csv(folder / "data" / "pretrain_docs.csv", keep_default_na=False, dtype=str)["text"].tolist()
    qa = pd.read_csv(folder / "data" / "pretrain_qa.csv", keep_default_na=False, dtype=str)
    questions, answers = qa["question"].tolist(), qa["answers"].tolist()
    started = time.time()
    tokenizer = train_tokenizer(
        docs + [f"{q} {a}" for q, a in zip(questions, answers)], cfg.tokenizer.vocab_size, cfg.model.n_positions
    )
    collator = QACollator(
        tokenizer, cfg.model.n_positions, train_cfg.max_question_len, train_cfg.max_answer_len, qa_eos=train_cfg.qa_eos
    )
    full_docs = [tokenizer(d, verbose=False)["input_ids"] for d in docs]
    doc_sequences = [(ids[: cfg.model.n_positions],) * 2 for ids in full_docs]
    # the QA loss covers the answer (and end-of-text) tokens only, as in QA tuning
    qa_sequences = [collator.qa_tokens(q, a) for q, a in zip(questions, answers)]
    set_seed(cfg.seed)
    model = make_model(cfg.model, tokenizer).to(device)
    losses = pretrain(model, doc_sequences, qa_sequences, train_cfg, tokenizer.pad_token_id, cfg.seed, progress)
    target = folder / "base_model"
    model.to("cpu").save_pretrained(target)
    tokenizer.save_pretrained(target)
    every = max(1, len(losses) // 50)
    log = dict(
        params=sum(p.numel() for p in model.parameters()),
        seconds=round(time.time() - started, 1),
        device=str(device),
        steps=len(losses),
        documents=len(docs),
        qa_pairs=len(qa_sequences),
        mean_document_tokens=sum(map(len, full_docs)) / len(full_docs),
        max_document_tokens=max(map(len, full_docs)),
        truncated_documents=sum(len(d) > cfg.model.n_positions for d in full_docs),
        loss_curve=[
            round(sum(losses[i : i + every]) / len(losses[i : i + every]), 4) for i in range(0, len(losses), every)
        ],
    )
    (target / "pretraining.json").write_text(json.dumps(log, indent=2) + "\n")
