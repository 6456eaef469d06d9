"""Dataset layer: every corpus behind one registry, plain-Python examples, one collate function, and
where each answer lies in its document (answer_spans)."""

from .base import Document, Example, group_shuffle, make_stream, to_documents
from .collate import QACollator, pad
from .registry import DATASETS, load_split, load_web_text, register

__all__ = [
    "DATASETS",
    "Document",
    "Example",
    "QACollator",
    "group_shuffle",
    "load_split",
    "load_web_text",
    "make_stream",
    "pad",
    "register",
    "to_documents",
]
