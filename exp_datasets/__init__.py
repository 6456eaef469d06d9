"""Dataset layer: every corpus behind one registry, plain-Python examples, one collate function."""
from .base import ANSWER_MATCHES, Document, Example, group_shuffle, make_stream, to_documents
from .collate import QACollator, pad
from .registry import DATASETS, SPLITS, load_split, load_web_text, register

__all__ = ["ANSWER_MATCHES", "DATASETS", "SPLITS", "Document", "Example", "QACollator", "group_shuffle", "load_split",
           "load_web_text", "make_stream", "pad", "register", "to_documents"]
