"""Token <-> character alignment for weightings computed from text: the bytes and characters
each token id stands for, for byte-level BPE (GPT-2, GPT-Neo, GPT-J, Pythia) and SentencePiece."""
import re
from functools import lru_cache

import numpy as np

from plumbing.errors import UsageError


def bytes_to_unicode():
    """GPT-2's byte-level alphabet: each byte is shown as one printable character."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
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
def token_bytes_table(tokenizer):
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
        raise UsageError(f"{type(tokenizer).__name__} is neither byte-level BPE nor SentencePiece; "
                         "the ssm and TFIDF weight models cannot align its tokens to characters")
    return [b"" if i in special or t is None else t.encode() if i in added else to_bytes(t)
            for i, t in zip(ids, tokens)]


def utf8_characters(data: bytes):
    """Decode UTF-8 one character at a time: (text, first byte of each character). Invalid bytes
    become U+FFFD as in bytes.decode(errors="replace"): one per maximal invalid run."""
    chars, starts, i = [], [], 0
    while i < len(data):
        lead = data[i]
        width = 1 if lead < 0x80 else 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF5 else 0
        try:
            char = data[i: i + width].decode("utf-8") if width else "\ufffd"
        except UnicodeDecodeError as err:  # a cut-off or broken sequence after a valid lead byte
            char, width = "\ufffd", err.end
        chars.append(char)
        starts.append(i)
        i += max(width, 1)
    return "".join(chars), starts


def decode_with_offsets(tokenizer, token_ids):
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
