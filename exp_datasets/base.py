"""Plain-Python examples and the stream operations every dataset shares."""
import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from plumbing.errors import UsageError, first_line


# what a prediction is scored against: every gold alternative, or the shortest (the reference)


@dataclass
class Example:
    """One question about one document. `answer` is the training target (the shortest gold
    alternative); `answers` holds every alternative, which scoring compares against (empty: only
    `answer`). `group` keeps related documents together when shuffling (a SQuAD title, an
    ArchivalQA article); `doc_id` identifies the passage."""

    text: str
    question: str
    answer: str
    doc_id: str
    group: str = ""
    extra: dict = field(default_factory=dict)
    answers: list = field(default_factory=list)

    def golds(self, match="all"):
        """The answers a prediction is scored against: every alternative (match="all", SQuAD's
        official rule) or the training target alone (match="shortest", the reference's rule)."""
        if match == "shortest" or not self.answers:
            return [self.answer]
        return list(self.answers)


@dataclass
class Document:
    text: str
    doc_id: str
    examples: list


def clean_answers(answers):
    """The non-empty alternatives, stripped, in their order."""
    return [a.strip() for a in answers if a and a.strip()]


def shortest_answer(answers):
    answers = clean_answers(answers)
    return min(answers, key=len) if answers else ""


def capitalize_first(answer: str) -> str:
    return answer[:1].upper() + answer[1:] if answer[:1].islower() else answer


def group_shuffle(items, key, rng: random.Random):
    """Shuffle the order of groups (by `key(item)`), keeping the order of items inside a group."""
    groups = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    order = list(groups)
    rng.shuffle(order)
    return [item for name in order for item in groups[name]]


def to_documents(examples):
    """De-duplicate passages: one Document per distinct text, questions attached, first-seen order."""
    documents = {}
    for example in examples:
        if example.text not in documents:
            documents[example.text] = Document(example.text, example.doc_id, [])
        documents[example.text].examples.append(example)
    return list(documents.values())


def make_stream(examples, downsample_to: int, seed: int):
    """The evaluation stream: distinct documents, `downsample_to` of them sampled with `seed`
    (-1 keeps all), in group-shuffled order; every question on a kept document stays."""
    rng = random.Random(seed)
    documents = to_documents(examples)
    if downsample_to is not None and downsample_to >= 0:
        if downsample_to > len(documents):
            raise UsageError(
                f"downsample_to={downsample_to} but the stream has only {len(documents)} documents; "
                "lower downsample_to or use -1 for all"
            )
        documents = [documents[i] for i in sorted(rng.sample(range(len(documents)), downsample_to))]
    group_of = {id(d): d.examples[0].group or d.doc_id for d in documents}
    return group_shuffle(documents, lambda d: group_of[id(d)], rng)


def read_csv(path, required_columns, what):
    """Read a CSV, failing with one line that names the file or the missing column."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file {path} does not exist; set data_dir (or the path option) to where it is")
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype=str, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise UsageError(f"{what} file {path} is empty; it needs a header row with "
                         f"{', '.join(required_columns)} and one row per example") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{what} file {path} is not UTF-8 (it holds byte {err.object[err.start]:#04x}); "
                         f"convert it, e.g. iconv -f cp1252 -t utf-8 {path.name} > utf8.csv") from None
    except pd.errors.ParserError as err:
        raise UsageError(f"{what} file {path} is not a well-formed CSV ({first_line(err)}); "
                         "check its quoting and column count") from None
    missing = [c for c in required_columns if c not in frame.columns]
    if missing:
        raise UsageError(
            f"{path} has no column {missing[0]!r} (columns: {', '.join(frame.columns)}); "
            f"a {what} file needs {', '.join(required_columns)}"
        )
    return frame


def check_texts(examples, source):
    for i, example in enumerate(examples):
        if not example.text.strip():
            raise UsageError(f"{source}: row {i} has an empty document; drop it or fill in its text")
        if not example.question.strip() or not example.answer.strip():
            raise UsageError(f"{source}: row {i} has an empty question or answer; drop or fix that row")
    if not examples:
        raise UsageError(f"{source} holds no examples; check the file")
    return examples
