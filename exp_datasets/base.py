"""Plain-Python examples and the stream operations every dataset shares."""

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from plumbing.errors import UsageError

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
    origin: str = ""  # where a person finds the example (file and line), for error messages

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
    """Read a CSV strictly: every row must have as many fields as the header, no column name may
    repeat, and a missing column or file is named. Any problem is one line naming the file, the line
    (as an editor counts it) and the column. The frame's index holds each row's first line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file {path} does not exist; set data_dir (or the path option) to where it is")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"{what} file {path} is not UTF-8 (it holds byte {err.object[err.start]:#04x}); "
            f"convert it, e.g. iconv -f cp1252 -t utf-8 {path.name} > utf8.csv"
        ) from None
    header, rows, lines = parse_csv_rows(text, path, what)
    if header is None:
        raise UsageError(
            f"{what} file {path} is empty; it needs a header row with "
            f"{', '.join(required_columns)} and one row per example"
        )
    repeated = [name for i, name in enumerate(header) if name in header[:i]]
    if repeated:
        raise UsageError(
            f"{what} file {path}: the header names column {repeated[0]!r} twice; give every column its own name"
        )
    missing = [c for c in required_columns if c not in header]
    if missing:
        raise UsageError(
            f"{path} has no column {missing[0]!r} (columns: {', '.join(header)}); "
            f"a {what} file needs {', '.join(required_columns)}"
        )
    return pd.DataFrame(rows, columns=header, index=lines, dtype=str)


def parse_csv_rows(text, path, what):
    """(header, rows, first line of each row) of a CSV text; blank lines are skipped, and a row whose
    field count differs from the header's is a one-line UsageError naming its line."""
    import csv
    import io
    import sys

    csv.field_size_limit(sys.maxsize)  # whole articles are single fields
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, rows, lines, line = None, [], [], 1
    try:
        for fields in reader:
            start, line = line, reader.line_num + 1
            if not fields:
                continue
            if header is None:
                header = fields
                continue
            if len(fields) != len(header):
                cut = (
                    f"fields after column {header[-1]!r} have no column"
                    if len(fields) > len(header)
                    else f"column {header[len(fields)]!r} is missing"
                )
                raise UsageError(
                    f"{what} file {path}, line {start}: the row has {len(fields)} fields but the "
                    f"header has {len(header)} ({cut}); quote every field that holds a comma"
                )
            rows.append(fields)
            lines.append(start)
    except csv.Error as err:
        raise UsageError(
            f"{what} file {path}, line {reader.line_num}: not well-formed CSV ({err}); check its quoting"
        ) from None
    return header, rows, lines


def split_answers(value, where):
    """The alternatives of an answers field, non-empty and stripped: a JSON list of strings
    (["maps", "other"]) or alternatives separated by a backslash (maps\\other). `where` names the
    field (file, line, column) in the error for a value that starts like a list but is none."""
    stripped = value.strip()
    if not stripped.startswith("["):
        return clean_answers(value.split("\\"))
    try:
        parsed = json.loads(stripped)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(answer, str) for answer in parsed):
        raise UsageError(
            f"{where} holds {stripped[:40]!r}, which starts like a JSON list but is not a list of "
            'strings; write the alternatives as ["first", "second"] or as first\\second'
        )
    return clean_answers(parsed)


def check_texts(examples, source):
    for i, example in enumerate(examples):
        where = example.origin or f"example {i + 1}"
        if not example.text.strip():
            raise UsageError(f"{source}: {where} has an empty document; drop it or fill in its text")
        if not example.question.strip() or not example.answer.strip():
            raise UsageError(f"{source}: {where} has an empty question or answer; drop or fix that row")
    if not examples:
        raise UsageError(f"{source} holds no examples; check the file")
    return examples
