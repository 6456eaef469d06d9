"""Weights across tokenizers: a CaMeLS whose body has another tokenizer than the base model reads the
document with its own tokens and carries the weights to the base tokens through the characters
(token_alignment.char_overlap_matrix, CaMeLS.transferred_weights)."""

import json

import numpy as np
import pytest
import torch
from conftest import directional_derivatives
from omegaconf import OmegaConf
from test_weight_model import CORPUS, byte_level_tokenizer, sentencepiece_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, PreTrainedTokenizerFast

import token_alignment as T
import weight_model as W
from exp_datasets import pad
from exp_datasets.collate import model_positions
from plumbing import errors

TEXTS = CORPUS + [
    "  Two leading spaces,\n\ttabs, and the café's crème brûlée; 東京 and 日本 are far — very far.",
    "Greta Moss lives in Oslo. Barack Obama visited Zürich; naïve friends paid $5 for 3 coffees.",
]


def unigram_tokenizer(texts, vocab_size):
    """A SentencePiece-style Unigram tokenizer (▁ marks a space, <0xHH> byte fallback for characters
    it never saw), trained here on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    trainer_tokenizer = Tokenizer(models.Unigram())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer_tokenizer.train_from_iterator(
        texts, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "</s>"], unk_token="<unk>")
    )
    pieces = json.loads(trainer_tokenizer.to_str())["model"]["vocab"]
    known = {piece for piece, _ in pieces}
    pieces = [(piece, score) for piece, score in pieces]
    pieces += [(f"<0x{b:02X}>", -50.0) for b in range(256) if f"<0x{b:02X}>" not in known]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="</s>")


@pytest.fixture(scope="module")
def bpe():
    """Byte-level BPE trained on the first half of the corpus (the base model's tokenizer)."""
    return byte_level_tokenizer(CORPUS[:2] * 4, vocab_size=330)


@pytest.fixture(scope="module")
def unigram():
    """Unigram trained on the second half (the body's tokenizer): its merges split the text otherwise."""
    return unigram_tokenizer(CORPUS[2:] * 4, vocab_size=90)


def make_body(tmp_path_factory, tokenizer, name, n_positions=256, seed=0):
    """A save_pretrained folder of a random 2-layer GPT-2 and its tokenizer."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=16,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    path = tmp_path_factory.mktemp(name)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def weight_model(body, base_tokenizer, seed=3, **options):
    """A CaMeLS on `body` reading `base_tokenizer`'s ids, its head perturbed so weights differ by token."""
    model = W.build_weight_model(
        OmegaConf.create(dict(name="CaMeLS", pretrained_model=str(body), head_width=8, **options)), base_tokenizer
    )
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for p in model.head.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def unigram_body(unigram, tmp_path_factory):
    return make_body(tmp_path_factory, unigram, "unigram_body")


@pytest.fixture(scope="module")
def bpe_body(bpe, tmp_path_factory):
    return make_body(tmp_path_factory, bpe, "bpe_body")


def batch_of(tokenizer, texts):
    pad_id = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    return pad([tokenizer(t)["input_ids"] for t in texts], pad_id)


# ---------------------------------------------------------------------------------------------
# The overlap matrix on hand cases


def test_overlap_matrix_hand_cases():
    # "abcdef": base tokens abc|def, body tokens ab|cd|ef; each base token: mean over its 3 characters
    assert np.allclose(
        T.char_overlap_matrix([(0, 3), (3, 6)], [(0, 2), (2, 4), (4, 6)], 6), [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]]
    )
    # one body token spanning both base tokens gives each its weight (no mass counted twice)
    assert np.allclose(T.char_overlap_matrix([(0, 1), (1, 3)], [(0, 3)], 3), [[1], [1]])
    # a 3-character text whose middle character is 2 byte pieces of the body: each piece half of it
    assert np.allclose(
        T.char_overlap_matrix([(0, 2), (2, 3)], [(0, 1), (1, 2), (1, 2), (2, 3)], 3),
        [[1 / 2, 1 / 4, 1 / 4, 0], [0, 0, 0, 1]],
    )
    # base byte pieces of one character all read that character
    assert np.allclose(T.char_overlap_matrix([(0, 1), (0, 1), (1, 2)], [(0, 2)], 2), [[1], [1], [1]])
    # a character no body token covers (a trimmed space) takes the nearest covered one's weight,
    # the preceding one on a tie
    assert np.allclose(T.char_overlap_matrix([(0, 2), (2, 4)], [(1, 2), (2, 4)], 4), [[1, 0], [0, 1]])
    assert np.allclose(T.char_overlap_matrix([(1, 2)], [(0, 1), (2, 3)], 3), [[1, 0]])
    assert np.allclose(T.char_overlap_matrix([(3, 4)], [(0, 1), (1, 2)], 4), [[0, 1]])
    # empty spans (BOS at the start, EOS at the end, a special token inside): the character before
    # (the first at the start)
    assert np.allclose(
        T.char_overlap_matrix([(0, 0), (0, 2), (2, 2), (2, 3), (3, 3)], [(0, 1), (1, 3)], 3),
        [[1, 0], [1 / 2, 1 / 2], [0, 1], [0, 1], [0, 1]],
    )
    # body special tokens (empty spans) receive nothing; no text at all: weight 0
    assert np.allclose(T.char_overlap_matrix([(0, 2)], [(0, 0), (0, 2)], 2), [[0, 1]])
    assert T.char_overlap_matrix([(0, 0)], [(0, 0)], 0).tolist() == [[0.0]]


def test_tokenize_with_offsets_gives_each_byte_fallback_piece_its_character(unigram, bpe):
    """The Unigram tokenizer's own offsets give every byte piece of an unknown run the whole run; the
    spans here give each piece its one character, and SentencePiece's added prefix space none."""
    for text in ("Paris 日本 x", " Paris 日本 x"):
        ids, spans = T.tokenize_with_offsets(unigram, text)
        tokens = unigram.convert_ids_to_tokens(ids)
        if not text.startswith(" "):
            assert tokens[0] == "▁" and spans[0] == (0, 0)  # the added prefix space
            tokens, spans = tokens[1:], spans[1:]
        byte_pieces = 0
        for token, (start, end) in zip(tokens, spans):
            if token.startswith("<0x"):
                assert end - start == 1 and int(token[3:5], 16) in text[start].encode()
                byte_pieces += 1
            else:
                assert text[start:end] == token.replace("▁", " ")
        assert byte_pieces >= 6 and sorted({c for s, e in spans for c in range(s, e)}) == list(range(len(text)))
        # the tokenizer's own offsets are coarser there: why the ids are decoded instead
        own = unigram(text, return_offsets_mapping=True)["offset_mapping"]
        own_byte_spans = {tuple(o) for o, t in zip(own, unigram.convert_ids_to_tokens(ids)) if t.startswith("<0x")}
        assert len(own_byte_spans) < len({sp for sp, t in zip(spans, tokens) if t.startswith("<0x")})
    assert T.tokenize_with_offsets(bpe, text)[1] == T.decode_with_offsets(bpe, bpe(text)["input_ids"])[1]


def char_weights_by_hand(spans, weights, n_chars):
    """Per-character weights computed directly: mean over covering tokens, else the nearest covered
    character's (the preceding one on a tie)."""
    direct = [None] * n_chars
    for c in range(n_chars):
        covering = [w for (s, e), w in zip(spans, weights) if s <= c < e]
        direct[c] = sum(covering) / len(covering) if covering else None
    covered = [c for c in range(n_chars) if direct[c] is not None]
    return [direct[min(covered, key=lambda k: (abs(k - c), k))] for c in range(n_chars)]


def base_weights_by_hand(base_spans, char_weights):
    out = []
    for s, e in base_spans:
        if e <= s:
            s = max(s - 1, 0)
            e = s + 1
        out.append(sum(char_weights[s:e]) / (e - s))
    return out


# ---------------------------------------------------------------------------------------------
# CaMeLS across tokenizers


def own_reading(model, text_ids):
    """The body's weights of its own token ids, computed as the body, head and activation do."""
    with torch.no_grad():
        hidden = model.backbone(input_ids=torch.tensor([text_ids])).last_hidden_state
        return torch.nn.functional.softplus(model.head(hidden).squeeze(-1), beta=3.0)[0].tolist()


@pytest.mark.parametrize("base_name,body_name", [("bpe", "unigram"), ("unigram", "bpe"), ("sentencepiece", "bpe")])
def test_transferred_weights_are_character_means_of_the_body_weights(
    request, base_name, body_name, bpe, unigram, tmp_path_factory
):
    """Each base token weighs the mean over its characters of the body's per-character weights,
    computed here by loops from the body's own reading of the decoded text (whitespace, merges that
    split differently, byte fallback and characters of several bytes on both sides)."""
    tokenizers = {"bpe": bpe, "unigram": unigram, "sentencepiece": sentencepiece_tokenizer()}
    base, body_tokenizer = tokenizers[base_name], tokenizers[body_name]
    body = request.getfixturevalue(f"{body_name}_body")
    model = weight_model(body, base)
    assert model.base_tokenizer is base and model_positions(model) is None
    ids, mask = batch_of(base, TEXTS)
    weights = model(ids, mask)
    assert weights[mask == 0].eq(0).all()
    split_differently = 0
    for row in range(len(TEXTS)):
        base_ids = ids[row, mask[row].bool()].tolist()
        decoded, base_spans = T.decode_with_offsets(base, base_ids)
        body_ids, body_spans = T.tokenize_with_offsets(body_tokenizer, decoded)
        per_char = char_weights_by_hand(body_spans, own_reading(model, body_ids), len(decoded))
        expected = base_weights_by_hand(base_spans, per_char)
        assert weights[row, mask[row].bool()].tolist() == pytest.approx(expected, rel=1e-5)
        split_differently += set(base_spans) != set(body_spans)
    assert split_differently == len(TEXTS)
    if base_name == "bpe":  # multi-byte characters are split into byte tokens on the base side
        text = TEXTS[4]
        decoded, spans = T.decode_with_offsets(base, base(text)["input_ids"])
        assert decoded == text and len(spans) > len(set(spans))


def test_same_tokenizer_reads_the_ids_exactly_as_before(bpe, bpe_body):
    """The body's own tokenizer: today's path, bit for bit (the body, head, activation and mask
    applied to the base ids), and the collator keeps the body's positions as a limit. Forcing the
    transfer with the same tokenizer gives the same weights on ASCII text (one token per span), and
    on byte pieces of one character their mean (the character is the unit of the transfer)."""
    model = weight_model(bpe_body, bpe)
    assert model.base_tokenizer is None and model_positions(model) == 256
    ids, mask = batch_of(bpe, [CORPUS[0], CORPUS[2], CORPUS[3]])
    with torch.no_grad():
        hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = torch.nn.functional.softplus(model.head(hidden).squeeze(-1), beta=3.0) * mask
        got = model(ids, mask)
        assert torch.equal(got, expected)
        model.base_tokenizer = bpe
        assert torch.allclose(model(ids, mask), expected, rtol=1e-5, atol=1e-6)
        text_ids = bpe(TEXTS[4])["input_ids"]
        _, spans = T.decode_with_offsets(bpe, text_ids)
        forced = model(torch.tensor([text_ids]), torch.ones(1, len(text_ids)))[0]
        per_char = char_weights_by_hand(spans, own_reading(model, text_ids), len(TEXTS[4]))
        assert forced.tolist() == pytest.approx(base_weights_by_hand(spans, per_char), rel=1e-5)
        assert not torch.allclose(forced, torch.tensor(own_reading(model, text_ids)), rtol=1e-3)


def test_char_weights_agree_read_on_base_tokens_or_the_bodys_own(unigram_body, unigram):
    """With a base tokenizer of single bytes, the per-character weights through the base tokens
    equal the per-character weights of the body reading its own tokens; with a coarser base they are
    the body's averaged over each base token."""
    single_bytes = byte_level_tokenizer(CORPUS, vocab_size=257)
    model = weight_model(unigram_body, single_bytes)
    for text in TEXTS[3:]:
        own = W.document_char_weights(model, text, unigram)
        through_base = W.document_char_weights(model, text, single_bytes)
        assert model.base_tokenizer is single_bytes
        assert np.isfinite(own).all() and own.std() > 1e-3
        assert np.allclose(through_base, own, rtol=1e-5)
    coarse = byte_level_tokenizer(CORPUS * 4, vocab_size=400)
    text = TEXTS[4]
    own = W.document_char_weights(model, text, unigram)
    through = W.document_char_weights(model, text, coarse)
    spans = T.tokenize_with_offsets(coarse, text)[1]
    token_means = [own[s:e].mean() for s, e in spans]
    assert through.tolist() == pytest.approx(char_weights_by_hand(spans, token_means, len(text)), rel=1e-5)
    assert len(spans) > len(set(spans))  # byte pieces of one character: it weighs their mean


def test_long_documents_are_read_in_windows(unigram, bpe, tmp_path_factory):
    """A body of 8 positions reads a long document in windows of 8 of its tokens, each on its own:
    every base token gets the weight of the windows' readings, and nothing bounds the base length."""
    body = make_body(tmp_path_factory, unigram, "short_body", n_positions=8)
    model = weight_model(body, bpe)
    text = TEXTS[4]
    ids, mask = batch_of(bpe, [text, CORPUS[0]])
    weights = model(ids, mask)
    decoded, base_spans = T.decode_with_offsets(bpe, ids[0].tolist())
    body_ids, body_spans = T.tokenize_with_offsets(unigram, decoded)
    assert len(body_ids) > 3 * 8
    windows = [own_reading(model, body_ids[k : k + 8]) for k in range(0, len(body_ids), 8)]
    per_char = char_weights_by_hand(body_spans, [w for window in windows for w in window], len(decoded))
    assert weights[0].tolist() == pytest.approx(base_weights_by_hand(base_spans, per_char), rel=1e-5)
    whole = own_reading(model, body_ids[:8])
    assert windows[0] == pytest.approx(whole)  # the first window is the body's reading of the start


def test_truncated_base_text_and_special_tokens(unigram_body, unigram, bpe):
    """A base document cut inside a character of several bytes ends in U+FFFD, which the body reads
    through byte fallback; an EOS weighs what the character before it does; a row of special tokens
    only weighs 0."""
    model = weight_model(unigram_body, bpe)
    full = bpe("Paris 日本")["input_ids"]
    cut = next(k for k in range(len(full), 0, -1) if "\ufffd" in T.decode_with_offsets(bpe, full[:k])[0])
    base_ids = full[:cut] + [bpe.eos_token_id]
    decoded, base_spans = T.decode_with_offsets(bpe, base_ids)
    assert decoded.endswith("\ufffd") and base_spans[-1] == (len(decoded), len(decoded))
    ids, mask = pad([base_ids, [bpe.eos_token_id]], bpe.pad_token_id)
    weights = model(ids, mask)
    body_ids, body_spans = T.tokenize_with_offsets(unigram, decoded)
    covering = [k for k, (s, e) in enumerate(body_spans) if s <= len(decoded) - 1 < e]
    assert len(covering) == 3  # U+FFFD falls back to its 3 bytes
    own = own_reading(model, body_ids)
    last_char = sum(own[k] for k in covering) / 3
    assert weights[0, -1].item() == pytest.approx(last_char, rel=1e-5)  # EOS: the character before it
    assert weights[0, -2].item() == pytest.approx(last_char, rel=1e-5)  # the cut token: only U+FFFD
    assert weights[1].tolist() == [0.0] * ids.shape[1]


def test_normalize_applies_to_the_base_tokens(unigram_body, bpe):
    model = weight_model(unigram_body, bpe, normalize=True)
    ids, mask = batch_of(bpe, TEXTS[:3])
    weights = model(ids, mask)
    assert torch.allclose(weights.sum(1), mask.sum(1).float(), rtol=1e-5)
    raw = model.transferred_weights(ids, mask)
    assert torch.allclose(weights, raw * mask.sum(1, keepdim=True) / raw.sum(1, keepdim=True), rtol=1e-5)


def test_saved_folder_carries_the_bodys_tokenizer(unigram_body, unigram, bpe, tmp_path):
    """A saved folder reads another base with the tokenizer/ it carries, without the body's folder;
    a folder without tokenizer/ loads the body's from its pretrained_model name."""
    import shutil

    model = weight_model(unigram_body, bpe)
    ids, mask = batch_of(bpe, TEXTS[3:])
    expected = model(ids, mask)
    model.save(tmp_path / "wm")
    moved = unigram_body.rename(unigram_body.with_name(unigram_body.name + "_moved"))
    try:
        loaded = W.load_weight_model(tmp_path / "wm", bpe)
    finally:
        moved.rename(unigram_body)
    assert torch.equal(loaded(ids, mask), expected)
    shutil.rmtree(tmp_path / "wm" / "tokenizer")
    assert torch.equal(W.load_weight_model(tmp_path / "wm", bpe)(ids, mask), expected)


# ---------------------------------------------------------------------------------------------
# Gradients through the transfer


def micro_weight_model(tokenizer, base_tokenizer, seed=5, normalize=False):
    torch.manual_seed(seed)
    backbone = GPT2Model(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=16,
            n_embd=8,
            n_layer=1,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            initializer_range=0.3,
            attn_implementation="eager",
        )
    )
    model = (
        W.CaMeLS(
            backbone,
            head_width=4,
            normalize=normalize,
            pretrained_model="micro",
            vocabulary=W.vocabulary_record(tokenizer),
        )
        .double()
        .eval()
    )
    model.body_tokenizer = tokenizer
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return model.read_base_tokens(base_tokenizer)


@pytest.mark.parametrize("normalize", [False, True])
def test_transfer_gradient_matches_finite_differences(unigram, bpe, normalize):
    model = micro_weight_model(unigram, bpe, normalize=normalize)
    ids, mask = batch_of(bpe, [TEXTS[4][:40], CORPUS[0][:30]])
    coefficients = torch.randn(ids.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = list(model.head.parameters()) + [model.backbone.h[0].mlp.c_fc.weight]
    analytic, numeric = directional_derivatives(params, lambda differentiable: (model(ids, mask) * coefficients).sum())
    assert abs(numeric) > 1e-4
    assert abs(analytic - numeric) / abs(numeric) < 1e-6


@pytest.fixture(scope="module")
def micro_meta_problem(unigram, bpe):
    """A micro base model of byte-level BPE ids, a weight model whose body reads Unigram tokens, and
    a batch of three documents and two questions (float64)."""
    torch.manual_seed(0)
    base = (
        GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(bpe),
                n_positions=32,
                n_embd=16,
                n_layer=2,
                n_head=2,
                initializer_range=0.3,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                attn_implementation="eager",
            )
        )
        .double()
        .eval()
    )
    text_ids, text_mask = pad([bpe(t)["input_ids"][:12] for t in (TEXTS[4], CORPUS[0], CORPUS[3])], bpe.pad_token_id)
    qa_ids, qa_mask = pad(
        [bpe(q)["input_ids"][:6] for q in ("Who visited Paris?", "Where is Zürich?")], bpe.pad_token_id
    )
    qa_labels = qa_ids.masked_fill(qa_mask == 0, -100)
    qa_labels[:, :3] = -100
    batch = {"text_ids": text_ids, "text_mask": text_mask, "qa_ids": qa_ids, "qa_mask": qa_mask, "qa_labels": qa_labels}
    return base, micro_weight_model(unigram, bpe), batch


def test_meta_gradient_across_tokenizers_matches_finite_differences(micro_meta_problem):
    """meta_objective.outer_loss with a base model of byte-level BPE ids and a weight model whose body
    reads Unigram tokens: the meta-gradient w.r.t. the head equals central finite differences."""
    from test_meta_gradient import FD_EPS, TOLERANCE, settings_for

    from meta_objective import outer_loss

    base, model, batch = micro_meta_problem
    settings = settings_for("torch_func", True, 1, 0.0)

    def outer(differentiable):
        weights = model(batch["text_ids"], batch["text_mask"])
        return outer_loss(base, weights, batch, {}, settings, differentiable=differentiable)[0]

    analytic, numeric = directional_derivatives(list(model.head.parameters()), outer, FD_EPS)
    assert abs(numeric) > 1e-4
    assert abs(analytic - numeric) / abs(numeric) < TOLERANCE


def test_forward_mode_meta_gradient_across_tokenizers(micro_meta_problem):
    """inner_backend=forward runs through the transfer (one document at a time): a probe's slope is
    the exact meta-gradient along it."""
    import dataclasses

    from test_meta_gradient import flat, settings_for

    from meta_objective import accumulate_meta_gradient, forward_meta_gradient

    base, model, batch = micro_meta_problem
    settings = settings_for("torch_func", True, 1, 0.0)
    model.zero_grad(set_to_none=True)
    accumulate_meta_gradient(model, base, batch, {}, settings)
    trainable = [p for p in model.parameters() if p.requires_grad]
    exact = flat([p.grad for p in trainable])
    model.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(5)
    probe = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in trainable]
    estimate = forward_meta_gradient(
        model, base, batch, {}, dataclasses.replace(settings, backend="forward"), probes=tuple(v[None] for v in probe)
    )[-1]
    slope = (flat(estimate) @ flat(probe)) / (flat(probe) @ flat(probe))
    expected = exact @ flat(probe)
    assert abs(expected) > 1e-3
    assert abs(slope - expected) / abs(expected) < 1e-9


def test_refuses_a_body_tokenizer_without_offsets(unigram_body, bpe):
    model = weight_model(unigram_body, bpe)
    model.body_tokenizer = type("SlowTokenizer", (), {"is_fast": False, "pad_token_id": 0})()
    ids, mask = batch_of(bpe, CORPUS[:1])
    with pytest.raises(errors.UsageError, match="gives no character offsets"):
        model(ids, mask)
