"""weight_model.py: token alignment, the three heuristic weightings, CaMeLS and its checkpoints."""

import copy
import json
import os
import re

import pytest
import torch
from omegaconf import OmegaConf
from sklearn.feature_extraction.text import TfidfVectorizer
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

import token_alignment
import weight_model as W
from exp_datasets import pad
from plumbing import environment, errors

CORPUS = [
    "Barack Obama visited Paris on Monday with 3 friends and paid $5 at Google.",
    "The café in Zürich serves naïve coffee — “quoted” text!!! ... and 日本語 too.",
    "Alice Brown works for Google in London; she plays the violin.",
    "Tiny worlds hold tiny facts: Greta Moss lives in Oslo and likes teal.",
]


def byte_level_tokenizer(texts, vocab_size):
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer(CORPUS * 4, vocab_size=340)


@pytest.fixture(scope="module")
def body_dir(tokenizer, tmp_path_factory):
    """A save_pretrained folder of a 2-layer GPT-2 with its tokenizer (the CaMeLS body)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    path = tmp_path_factory.mktemp("body")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def byte_token_id(tokenizer, byte):
    return tokenizer.convert_tokens_to_ids(token_alignment.bytes_to_unicode()[byte])


def hf_offsets(tokenizer, text):
    encoding = tokenizer(text, return_offsets_mapping=True)
    return encoding["input_ids"], encoding["offset_mapping"]


def marked_characters(text, words):
    """1.0 on the characters of the first occurrence of each of `words` in `text`, else 0.0."""
    score = [0.0] * len(text)
    for word in words:
        start = text.index(word)
        score[start : start + len(word)] = [1.0] * len(word)
    return score


def expected_weights_from_char_scores(offsets, char_score):
    return [max((char_score[c] for c in range(s, e)), default=0.0) for s, e in offsets]


# ---------------------------------------------------------------------------------------------
# Alignment


def test_alignment_splits_multibyte_characters_over_byte_tokens(tokenizer):
    # "a日!" as single-byte tokens: the three bytes of 日 each cover the whole character
    ids = [byte_token_id(tokenizer, b) for b in "a日!".encode()]
    text, spans = token_alignment.decode_with_offsets(tokenizer, ids)
    assert text == "a日!"
    assert spans == [(0, 1), (1, 2), (1, 2), (1, 2), (2, 3)]
    # a character cut off at the end decodes to U+FFFD, still covered by its byte
    text, spans = token_alignment.decode_with_offsets(tokenizer, ids[:3])
    assert text == "a\ufffd" == "a日".encode()[:3].decode(errors="replace")
    assert spans == [(0, 1), (1, 2), (1, 2)]


def test_alignment_special_tokens_are_empty_and_text_round_trips(tokenizer):
    for sentence in CORPUS + ["  two leading spaces,\n\ttabs and ?!?!... punctuation runs"]:
        ids, offsets = hf_offsets(tokenizer, sentence)
        text, spans = token_alignment.decode_with_offsets(tokenizer, ids)
        assert text == sentence
        # the spans tile the text in order, overlapping only where a character is split
        assert spans[0][0] == 0 and spans[-1][1] == len(sentence)
        for (_, e0), (s1, e1) in zip(spans, spans[1:]):
            assert s1 in (e0, e0 - 1) and e1 > s1
        for token_id, (start, end) in zip(ids, spans):
            piece = tokenizer.decode([token_id])
            if "\ufffd" not in piece:  # a whole-character token decodes to exactly its span
                assert text[start:end] == piece
    eos = tokenizer.eos_token_id
    ids = tokenizer("hi")["input_ids"]
    text, spans = token_alignment.decode_with_offsets(tokenizer, [eos] + ids + [eos])
    assert text == "hi" and spans[0] == (0, 0) and spans[-1] == (2, 2)


# ---------------------------------------------------------------------------------------------
# Heuristic weightings


def weights_for(model, tokenizer, texts, side="right"):
    ids, mask = pad([tokenizer(t)["input_ids"] for t in texts], tokenizer.pad_token_id, side=side)
    return model(ids, mask), mask


def test_uniform_is_init_scalar_on_real_tokens(tokenizer):
    model = W.build_weight_model(OmegaConf.create({"name": "uniform", "init_scalar": 0.5}), tokenizer)
    weights, mask = weights_for(model, tokenizer, CORPUS[:2])
    assert torch.equal(weights, 0.5 * mask.float())


def test_ssm_marks_named_entities_but_not_numbers(tokenizer):
    cfg = OmegaConf.load(environment.REPO_ROOT / "conf/model/ssm.yaml")
    model = W.build_weight_model(cfg, tokenizer)
    sentence = CORPUS[0]  # entities: Barack Obama, Paris, Monday, Google; 3 (CARDINAL), 5 (MONEY) ignored
    kept = ["Barack Obama", "Paris", "Monday", "Google"]
    char_score = marked_characters(sentence, kept)
    ids, offsets = hf_offsets(tokenizer, sentence)
    expected = expected_weights_from_char_scores(offsets, char_score)
    for side in ("right", "left"):
        weights, mask = weights_for(model, tokenizer, [sentence, "x"], side=side)
        assert weights[0].tolist() == expected
        assert weights[1][~mask[1].bool()].eq(0).all()
    ignored = [i for i, (s, e) in enumerate(offsets) if any(ch in "35$" for ch in sentence[s:e])]
    assert ignored and all(expected[i] == 0.0 for i in ignored)


def tfidf_expected(tokenizer, documents, text, **vectorizer_options):
    """Independent computation: sklearn's TF-IDF of each word of `text`, max over overlapping words."""
    vectorizer = TfidfVectorizer(**vectorizer_options).fit(sorted(set(documents)))
    row = vectorizer.transform([text]).toarray()[0]
    char_score = [0.0] * len(text)
    for match in re.finditer(r"(?u)\b\w\w+\b", text):
        column = vectorizer.vocabulary_.get(match.group().lower())
        if column is not None:
            char_score[match.start() : match.end()] = [row[column]] * (match.end() - match.start())
    ids, offsets = hf_offsets(tokenizer, text)
    return expected_weights_from_char_scores(offsets, char_score)


def test_tfidf_weight_is_max_over_overlapping_words(tokenizer):
    cfg = OmegaConf.create({"name": "TFIDF", "min_threshold": None, "vectorizer": {}})
    model = W.build_weight_model(cfg, tokenizer, documents=lambda: CORPUS)
    texts = [CORPUS[2], CORPUS[0]]
    weights, mask = weights_for(model, tokenizer, texts)
    for row, text in enumerate(texts):
        expected = tfidf_expected(tokenizer, CORPUS, text)
        assert weights[row][mask[row].bool()].tolist() == pytest.approx(expected, abs=1e-6)
    assert weights[0][~mask[0].bool()].eq(0).all()


def test_tfidf_min_threshold_zeroes_below_the_quantile(tokenizer):
    cfg = OmegaConf.create({"name": "TFIDF", "min_threshold": 0.5, "vectorizer": {}})
    model = W.build_weight_model(cfg, tokenizer, documents=CORPUS)
    weights, _ = weights_for(model, tokenizer, [CORPUS[3]])
    full = torch.tensor(tfidf_expected(tokenizer, CORPUS, CORPUS[3]))
    cutoff = torch.quantile(full, 0.5)
    assert weights[0].tolist() == pytest.approx(torch.where(full < cutoff, 0.0, full).tolist(), abs=1e-6)
    assert (weights[0] == 0).sum() > (full == 0).sum()


def oracle_stream():
    """Documents of CORPUS with questions: one answer given by its span, one found by its string."""
    from exp_datasets import Document, Example

    violin = Example(
        CORPUS[2],
        "What does Alice play?",
        "violin",
        "d2",
        extra={"answer_start": CORPUS[2].index("violin"), "answer_end": CORPUS[2].index("violin") + 6},
    )
    london = Example(CORPUS[2], "Where does Alice work?", "London", "d2")  # no span: every occurrence
    oslo = Example(CORPUS[3], "Where does Greta live?", "Oslo", "d3")
    return [Document(CORPUS[2], "d2", [violin, london]), Document(CORPUS[3], "d3", [oslo])]


def test_oracle_weighs_exactly_the_answer_tokens(tokenizer):
    stream = oracle_stream()
    model = W.build_weight_model(OmegaConf.create({"name": "oracle", "normalize": False}), tokenizer, stream=stream)
    weights, mask = weights_for(model, tokenizer, [CORPUS[2], CORPUS[3]])
    for row, (text, answers) in enumerate(((CORPUS[2], ["violin", "London"]), (CORPUS[3], ["Oslo"]))):
        char_score = marked_characters(text, answers)
        _, offsets = hf_offsets(tokenizer, text)
        expected = expected_weights_from_char_scores(offsets, char_score)
        assert weights[row][mask[row].bool()].tolist() == expected and 0 < sum(expected) < len(expected)
    # normalised: the same tokens, each document with the mass of uniform weights
    normalized = W.build_weight_model(
        OmegaConf.load(environment.REPO_ROOT / "conf/model/oracle.yaml"), tokenizer, stream=stream
    )
    scaled, _ = weights_for(normalized, tokenizer, [CORPUS[2], CORPUS[3]])
    assert torch.equal(scaled > 0, weights > 0)
    assert scaled.sum(1).tolist() == pytest.approx(mask.sum(1).float().tolist())
    # a document cut short (max_text_len) is matched to its stream document by its beginning
    ids = tokenizer(CORPUS[2])["input_ids"]
    cut = model(torch.tensor([ids[:-3]]), torch.ones(1, len(ids) - 3, dtype=torch.long))
    assert torch.equal(cut[0], weights[0][: len(ids) - 3])


def test_oracle_finds_documents_decoded_with_a_sentencepiece_space_in_front():
    """A Unigram tokenizer (▁ before the first word) decodes the document as " " + text: the oracle
    still weighs exactly the tokens of the answers."""
    from tiny_world.transfer_bases import train_unigram_tokenizer

    unigram = train_unigram_tokenizer(CORPUS * 4, 120, 256)
    stream = oracle_stream()
    model = W.build_weight_model(OmegaConf.create({"name": "oracle", "normalize": False}), unigram, stream=stream)
    ids = unigram(CORPUS[3])["input_ids"]
    assert token_alignment.decode_with_offsets(unigram, ids)[0] == " " + CORPUS[3]
    weights = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
    marked = [i for i, w in enumerate(weights.tolist()) if w > 0]
    assert marked and unigram.decode([ids[i] for i in marked]).strip() == "Oslo"


def test_oracle_refuses_documents_it_has_no_answers_for(tokenizer):
    cfg = OmegaConf.create({"name": "oracle", "normalize": True})
    with pytest.raises(errors.UsageError, match="model=oracle"):
        W.build_weight_model(cfg, tokenizer)
    model = W.build_weight_model(cfg, tokenizer, stream=oracle_stream())
    with pytest.raises(errors.UsageError, match="not in its stream"):
        weights_for(model, tokenizer, [CORPUS[0]])


def test_no_adaptation_weighs_nothing_and_says_it_does_not_adapt(tokenizer):
    model = W.build_weight_model(OmegaConf.load(environment.REPO_ROOT / "conf/model/none.yaml"), tokenizer)
    weights, _ = weights_for(model, tokenizer, CORPUS[:2])
    assert not model.adapts and weights.eq(0).all()
    assert all(W.WEIGHT_MODELS[name].adapts for name in W.WEIGHT_MODELS if name != "none")


def test_unknown_weight_model_is_a_usage_error(tokenizer):
    with pytest.raises(errors.UsageError, match="model=nope is unknown"):
        W.build_weight_model(OmegaConf.create({"name": "nope"}), tokenizer)


# ---------------------------------------------------------------------------------------------
# CaMeLS


def camels_cfg(body_dir, **options):
    return OmegaConf.create(dict(name="CaMeLS", pretrained_model=str(body_dir), **options))


def test_camels_starts_uniform_and_masks_padding(tokenizer, body_dir):
    model = W.build_weight_model(camels_cfg(body_dir), tokenizer)
    weights, mask = weights_for(model, tokenizer, CORPUS[:2])
    start = torch.log(torch.tensor(2.0)) / 3  # softplus(0) with beta 3
    assert torch.allclose(weights, start * mask.float())
    normalized = W.build_weight_model(camels_cfg(body_dir, normalize=True, activation="exp"), tokenizer)
    with torch.no_grad():
        normalized.head[2].weight.normal_()
    weights, mask = weights_for(normalized, tokenizer, CORPUS[:2])
    assert torch.allclose(weights.sum(1), mask.sum(1).float(), atol=1e-4)
    assert weights[~mask.bool()].eq(0).all()


def test_camels_freeze_base_trains_only_the_head(tokenizer, body_dir):
    model = W.build_weight_model(camels_cfg(body_dir, freeze_base=True), tokenizer)
    with torch.no_grad():
        model.head[2].weight.normal_()
    weights, _ = weights_for(model, tokenizer, CORPUS[:1])
    weights.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in model.head.parameters()}


def test_camels_save_and_load_give_identical_weights(tokenizer, body_dir, tmp_path, monkeypatch):
    cfg = camels_cfg(body_dir, head_width=16, activation="sigmoid")
    model = W.build_weight_model(cfg, tokenizer)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    expected, _ = weights_for(model.eval(), tokenizer, CORPUS)
    folder, single = model.save(tmp_path / "wm"), model.save(tmp_path / "wm.pt")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save(model, tmp_path / "module.pt")  # a pickled module: loading it could run code, so it is refused
    with pytest.raises(errors.UsageError, match="re-save it as tensors"):
        W.load_weight_model(tmp_path / "module.pt", tokenizer)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    loaded = [W.load_weight_model(tmp_path / "state.pt", tokenizer, cfg)]
    # the folder and the self-describing .pt need neither the hub nor the body's own folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    moved_body = body_dir.rename(body_dir.with_name(body_dir.name + "_moved"))
    try:
        loaded += [W.load_weight_model(p, tokenizer) for p in (folder, single)]
    finally:
        moved_body.rename(body_dir)
    for other in loaded:
        weights, _ = weights_for(other, tokenizer, CORPUS)
        assert torch.equal(weights, expected)
        assert other.options["activation"] == "sigmoid" and other.options["head_width"] == 16


def test_a_moved_weight_model_folder_is_self_contained(tokenizer, body_dir, tmp_path, monkeypatch):
    """save_pretrained writes the body's tokenizer and names the body relative to the folder; a copy on
    another path (original deleted, another working directory) loads with the same weights and tokenizer."""
    import shutil

    monkeypatch.chdir(body_dir.parent)
    model = W.build_weight_model(camels_cfg(body_dir.name), tokenizer)  # the body named relative to the cwd
    with torch.no_grad():
        model.head[2].weight.normal_()
    expected, _ = weights_for(model.eval(), tokenizer, CORPUS)
    model.save_pretrained(tmp_path / "runs" / "wm")
    recorded = json.loads((tmp_path / "runs" / "wm" / "config.json").read_text())["weight_model"]["pretrained_model"]
    assert recorded == os.path.relpath(body_dir, tmp_path / "runs" / "wm")
    assert W.CaMeLS.from_pretrained(tmp_path / "runs" / "wm").options["pretrained_model"] == str(body_dir)
    shutil.copytree(tmp_path / "runs" / "wm", tmp_path / "elsewhere" / "deep" / "wm")
    shutil.rmtree(tmp_path / "runs")
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved = W.CaMeLS.from_pretrained("deep/wm", tokenizer)
    assert torch.equal(weights_for(moved, tokenizer, CORPUS)[0], expected)
    assert moved.tokenizer.get_vocab() == tokenizer.get_vocab()
    weighed = W.token_weights(moved, tokenizer, CORPUS[0])
    ids = tokenizer(CORPUS[0])["input_ids"]
    assert weighed.input_ids == ids and "".join(weighed.tokens) == tokenizer.decode(ids)
    alone, _ = weights_for(moved, tokenizer, CORPUS[:1])
    assert weighed.weights == pytest.approx(alone[0].tolist(), rel=1e-6)


def test_an_old_weight_model_folder_without_tokenizer_still_loads(tokenizer, body_dir, tmp_path):
    """No tokenizer/ in the folder: the recorded body's tokenizer when the body is there, else a warning."""
    import shutil

    W.build_weight_model(camels_cfg(body_dir), tokenizer).save(tmp_path / "wm")
    shutil.rmtree(tmp_path / "wm" / "tokenizer")
    assert W.load_weight_model(tmp_path / "wm").tokenizer.get_vocab() == tokenizer.get_vocab()
    config = json.loads((tmp_path / "wm" / "config.json").read_text())
    config["weight_model"]["pretrained_model"] = str(tmp_path / "gone")
    (tmp_path / "wm" / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="carries no tokenizer and none loads from its body .*gone"):
        assert W.load_weight_model(tmp_path / "wm", tokenizer).tokenizer is None


def test_camels_refuses_another_vocabulary_without_its_own_tokenizer(tokenizer, body_dir, tmp_path):
    """A weight model whose body's tokenizer cannot be loaded (a folder saved without tokenizer/,
    a body folder that no longer holds one) refuses a base tokenizer of another vocabulary; with its
    tokenizer it reads that base through its own tokens (tests/test_transfer.py)."""
    import shutil

    model = W.build_weight_model(camels_cfg(body_dir), tokenizer)
    model.save(tmp_path / "wm")
    other = byte_level_tokenizer(["completely different text for another vocabulary"] * 4, vocab_size=300)
    assert W.load_weight_model(tmp_path / "wm", other).base_tokenizer is other
    shutil.rmtree(tmp_path / "wm" / "tokenizer")
    shutil.copytree(body_dir, tmp_path / "body")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (tmp_path / "body" / name).unlink(missing_ok=True)
    config = json.loads((tmp_path / "wm" / "config.json").read_text())
    config["weight_model"]["pretrained_model"] = str(tmp_path / "body")  # a body folder without a tokenizer
    (tmp_path / "wm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(errors.UsageError, match="another vocabulary"):
        W.load_weight_model(tmp_path / "wm", other)
    # the same tokenizer is read directly, without the body's tokenizer
    assert W.load_weight_model(tmp_path / "wm", tokenizer).base_tokenizer is None
    # same vocabulary with extra added tokens (as GPT-J's tokenizer has over GPT-2's) goes through the text
    extended = copy.deepcopy(tokenizer)
    extended.add_tokens(["<|extratoken_1|>", "<|extratoken_2|>"])
    assert len(extended) > model.backbone.config.vocab_size
    assert W.build_weight_model(camels_cfg(body_dir), extended).base_tokenizer is extended


def test_camels_refuses_a_state_dict_of_another_shape(tokenizer, body_dir, tmp_path):
    model = W.build_weight_model(camels_cfg(body_dir, head_width=16), tokenizer)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    with pytest.raises(errors.UsageError, match="does not fit"):
        W.load_weight_model(tmp_path / "state.pt", tokenizer, camels_cfg(body_dir, head_width=128))
    torch.save({"not": "weights"}, tmp_path / "junk.pt")
    with pytest.raises(errors.UsageError, match="holds no state dict"):
        W.load_weight_model(tmp_path / "junk.pt", tokenizer, camels_cfg(body_dir))


def sentencepiece_tokenizer():
    """A SentencePiece-style BPE (▁ marks a space, <0xHH> byte fallback) like Llama's."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer_tokenizer.train_from_iterator(CORPUS[:1] * 4, trainers.BpeTrainer(vocab_size=120, special_tokens=["</s>"]))
    trained = json.loads(trainer_tokenizer.to_str())["model"]
    vocab = {"</s>": 0, **{f"<0x{b:02X}>": b + 1 for b in range(256)}}
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>")


def test_alignment_of_sentencepiece_byte_fallback():
    tokenizer = sentencepiece_tokenizer()
    sentence = "Obama visited 日本 café!"
    ids = tokenizer(sentence)["input_ids"]
    assert "<0xE6>" in tokenizer.convert_ids_to_tokens(ids)  # 日 and 本 fall back to bytes
    text, spans = token_alignment.decode_with_offsets(tokenizer, ids)
    assert text == " " + sentence  # the SentencePiece prefix space is part of the first piece
    pieces = [text[s:e] for s, e in spans]
    assert pieces.count("日") == 3 and pieces.count("本") == 3 and pieces.count("é") == 2
    assert len({span for span, piece in zip(spans, pieces) if piece == "日"}) == 1  # one character, one span
    assert text[spans[0][0] : spans[0][1]] == " Obama"
