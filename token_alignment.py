"""Token <-> character alignment for weightings computed from text: the bytes and characters
each token id stands for, for byte-level BPE (GPT-2, GPT-Neo, GPT-J, Pythia) and SentencePiece."""

import re
from functools import lru_cache

import numpy as np

from plumbing.errors import UsageError


def bytes_to_unicode() -> dict:
    """GPT-2's byte-level alphabet: each byte is shown as one printable character."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars)}


SENTENCEPIECE_SPACE = "\u2581"
BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=8)
def token_bytes_table(tokenizer) -> list:
    """The bytes each token id stands for (special tokens: none). Knows byte-level BPE (GPT-2,
    GPT-Neo, GPT-J, Pythia) and SentencePiece (▁ for a space, <0xHH> byte fallback)."""
    ids = list(range(len(tokenizer)))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    special = set(tokenizer.all_special_ids)
    added = {tid for tid in tokenizer.get_added_vocab().values()} - special
    byte_of_char = {c: b for b, c in bytes_to_unicode().items()}
    regular = [t for i, t in zip(ids, tokens) if i not in special and i not in added and t is not None]
    if all(c in byte_of_char for t in regular for c in t):

        def to_bytes(token):
            return bytes(byte_of_char[c] for c in token)
    elif any(t.startswith(SENTENCEPIECE_SPACE) for t in regular):

        def to_bytes(token):
            match = BYTE_FALLBACK.fullmatch(token)
            return bytes([int(match.group(1), 16)]) if match else token.replace(SENTENCEPIECE_SPACE, " ").encode()
    else:
        raise UsageError(
            f"{type(tokenizer).__name__} is neither byte-level BPE nor SentencePiece; "
            "the ssm and TFIDF weight models cannot align its tokens to characters"
        )
    return [
        b"" if i in special or t is None else t.encode() if i in added else to_bytes(t) for i, t in zip(ids, tokens)
    ]


def utf8_characters(data: bytes) -> tuple:
    """Decode UTF-8 one character at a time: (text, first byte of each character). Invalid bytes
    become U+FFFD as in bytes.decode(errors="replace"): one per maximal invalid run."""
    chars, starts, i = [], [], 0
    while i < len(data):
        lead = data[i]
        width = (
            1
            if lead < 0x80
            else 2
            if 0xC2 <= lead < 0xE0
            else 3
            if 0xE0 <= lead < 0xF0
            else 4
            if 0xF0 <= lead < 0xF5
            else 0
        )
        try:
            char = data[i : i + width].decode("utf-8") if width else "\ufffd"
        except UnicodeDecodeError as err:  # a cut-off or broken sequence after a valid lead byte
            char, width = "\ufffd", err.end
        chars.append(char)
        starts.append(i)
        i += max(width, 1)
    return "".join(chars), starts


def decode_with_offsets(tokenizer, token_ids) -> tuple:
    """Text of `token_ids` and, per token, the (start, end) character span it covers.

    Tokens are joined as bytes before decoding, so a character split over several byte-level
    tokens is whole in the text and each of those tokens' spans covers it. Special tokens get
    an empty span.
    """
    table = token_bytes_table(tokenizer)
    pieces = [table[int(t)] for t in token_ids]
    data = b"".join(pieces)
    text, char_starts = utf8_characters(data)
    # character index of every byte (continuation bytes share their character's), then len(text)
    widths = np.diff(np.array(char_starts + [len(data)], dtype=np.int64))
    char_of_byte = np.append(np.repeat(np.arange(len(char_starts)), widths), len(text))
    spans, offset = [], 0
    for piece in pieces:
        start = int(char_of_byte[offset])
        end = int(char_of_byte[offset + len(piece) - 1]) + 1 if piece else start
        spans.append((start, end))
        offset += len(piece)
    return text, spans


# ---------------------------------------------------------------------------------------------
# Carrying per-token values from one tokenization of a text to another, through its characters


def character_tokens(spans, n_chars):
    """Sparse (n_chars × n_tokens) matrix: row c spreads one unit evenly over the tokens whose
    spans cover character c, so (matrix @ token_values)[c] is the mean value of those tokens (the
    byte pieces of one character share it). A character no token covers (whitespace a tokenizer
    leaves out of its offsets, text past the tokens read) takes the row of the nearest covered
    character, the preceding one on a tie: giving it 0 instead would lower the mean of every other
    tokenization's token that includes it, which weighs such tokens down for no reason in the text."""
    from scipy import sparse

    rows, cols = [], []
    for token, (start, end) in enumerate(spans):
        rows.extend(range(start, end))
        cols.extend([token] * (end - start))
    rows, cols = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    covering = np.bincount(rows, minlength=n_chars)
    covered = np.flatnonzero(covering)
    if n_chars == 0 or covered.size == 0:
        return sparse.csr_matrix((n_chars, len(spans)))
    # nearest covered character of each character (ties go to the preceding one)
    after = np.searchsorted(covered, np.arange(n_chars)).clip(max=covered.size - 1)
    before = (after - 1).clip(min=0)
    chars = np.arange(n_chars)
    nearest = np.where(
        np.abs(covered[before] - chars) <= np.abs(covered[after] - chars), covered[before], covered[after]
    )
    direct = sparse.csr_matrix((1.0 / covering[rows], (rows, cols)), shape=(n_chars, len(spans)))
    return direct[nearest]


def token_characters(spans, n_chars):
    """Sparse (n_tokens × n_chars) matrix whose row i averages over the characters of span i, so
    (matrix @ char_values)[i] is token i's character-length-weighted mean. A token with an empty
    span (a special token such as BOS or EOS) takes the character just before its position (the
    first character at the start): an EOS closes the text it follows, so it weighs as the end of
    that text does, and no new weight appears that the text does not carry. With no text at all
    the row is empty (weight 0)."""
    from scipy import sparse

    rows, cols, values = [], [], []
    for token, (start, end) in enumerate(spans):
        if n_chars == 0:
            continue
        if end <= start:
            start = min(max(start - 1, 0), n_chars - 1)
            end = start + 1
        rows.extend([token] * (end - start))
        cols.extend(range(start, end))
        values.extend([1.0 / (end - start)] * (end - start))
    return sparse.csr_matrix((values, (rows, cols)), shape=(len(spans), n_chars))


def char_overlap_matrix(target_spans, source_spans, n_chars):
    """Dense (n_target × n_source) matrix M such that M @ source_values gives each target token the
    character-length-weighted mean, over the characters it covers, of the per-character values
    (a character's value: the mean over the source tokens covering it). Each row sums to 1 (0 for
    a target token with nothing to read). Being linear, M carries gradients from target values
    back to source values; a source token spanning several target tokens shares its value with
    each of them without its mass being counted more than once per character."""
    return (token_characters(target_spans, n_chars) @ character_tokens(source_spans, n_chars)).toarray()


def char_values(spans, token_values, n_chars):
    """Per-character values of a text from per-token values: each character the mean over the
    tokens covering it (uncovered characters: the nearest covered one's, as in `character_tokens`)."""
    return character_tokens(spans, n_chars) @ np.asarray(token_values, dtype=np.float64)


def tokenize_with_offsets(tokenizer, text):
    """`tokenizer`'s ids of `text` and the character span of `text` each covers. The spans come from
    decoding the ids (`decode_with_offsets`: one character per byte-fallback piece, where the
    tokenizer's own offsets give every piece of an unknown run the whole run) when that gives back
    `text`, or `text` behind SentencePiece's added prefix space (the space then belongs to no
    character of `text`); otherwise (a normaliser changed the text, a tokenizer of another kind)
    from the tokenizer's offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{type(tokenizer).__name__} gives no character offsets; use a fast (Rust) tokenizer")
    # the text may hold more tokens than the model's length (it is read in windows): no warning
    encoding = tokenizer(text, return_offsets_mapping=True, verbose=False)
    ids = encoding["input_ids"]
    try:
        decoded, spans = decode_with_offsets(tokenizer, ids)
    except UsageError:  # neither byte-level BPE nor SentencePiece
        decoded = None
    if decoded == text:
        return ids, spans
    if decoded == " " + text:
        return ids, [(max(start - 1, 0), max(end - 1, 0)) for start, end in spans]
    return ids, [tuple(span) for span in encoding["offset_mapping"]]


def retokenize(tokenizer, other_tokenizer, token_ids):
    """The text of `token_ids` (ids of `tokenizer`) read again by `other_tokenizer`: (text, the
    character span of each of `token_ids`, the other tokenizer's ids, their character spans)."""
    text, spans = decode_with_offsets(tokenizer, token_ids)
    other_ids, other_spans = tokenize_with_offsets(other_tokenizer, text)
    return text, spans, other_ids, other_spans
