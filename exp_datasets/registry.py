"""One registry of datasets, keyed by the `name` field of the dataset config.

Every loader returns plain `Example`s for one of the splits
  qa_train, qa_val  (QA pre-tuning), train, val (meta-training streams), test (evaluation stream);
`answer` is the shortest alternative (the training target), `answers` all of them (scoring), both
capitalised where the config says.
"""

import random
import zlib
from pathlib import Path

from plumbing.errors import UsageError
from plumbing.schemas import SPLITS

from .base import (
    Example,
    capitalize_first,
    check_texts,
    clean_answers,
    group_shuffle,
    read_csv,
    shortest_answer,
    split_answers,
)

DATASETS = {}


def register(name):
    def add(loader):
        DATASETS[name] = loader
        return loader

    return add


def load_split(dataset_cfg, split, path=None):
    """Examples of `split` for the dataset described by `dataset_cfg`; `path` overrides the file."""
    name = dataset_cfg.get("name")
    if name not in DATASETS:
        raise UsageError(f"dataset={name} is unknown; choose one of {', '.join(sorted(DATASETS))}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    examples = DATASETS[name](dataset_cfg, split, path)
    if dataset_cfg.get("capitalize_answers", False):
        for example in examples:
            example.answer = capitalize_first(example.answer)
            example.answers = [capitalize_first(a) for a in example.answers]
    return check_texts(examples, f"dataset={name} split={split}")


def split_path(dataset_cfg, split, path=None):
    if path:
        return Path(path)
    data_dir = dataset_cfg.get("data_dir")
    if not data_dir:
        raise UsageError(f"dataset={dataset_cfg.name} has no data_dir; set dataset.data_dir=/path/to/csvs")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(
            f"data_dir {data_dir} of dataset={dataset_cfg.name} does not exist; "
            "download the CSVs and set dataset.data_dir to their folder"
        )
    return data_dir / dataset_cfg.files[split]


@register("streamingqa")
def load_streamingqa(cfg, split, path=None):
    """CSV with `text`, `question`, `answers` (alternatives separated by a backslash, or a JSON list)."""
    file = split_path(cfg, split, path)
    frame = read_csv(file, ["text", "question", "answers"], "StreamingQA")
    doc_ids = frame["doc_id"] if "doc_id" in frame.columns else frame["text"].factorize()[0].astype(str)
    examples = []
    for line, row, doc_id in zip(frame.index, frame.itertuples(index=False), doc_ids):
        answers = split_answers(row.answers, f"{file}, line {line}, column 'answers'")
        examples.append(
            Example(
                text=row.text,
                question=row.question,
                answer=shortest_answer(answers),
                answers=answers,
                doc_id=str(doc_id),
                group=str(doc_id),
                origin=f"{file} line {line}",
                extra={
                    k: getattr(row, k) for k in ("answer_start", "answer_end", "answer_spans") if k in frame.columns
                },
            )
        )
    return examples


@register("tiny_world")
def load_tiny_world(cfg, split, path=None):
    """The embedded synthetic world: StreamingQA's schema plus answer character spans."""
    return load_streamingqa(cfg, split, path)


@register("archivalqa")
def load_archivalqa(cfg, split, path=None):
    """CSVs written by ArchivalQA_processing.ipynb: a question per row with its paragraph
    (`ans_paragraph`) and whole article (`ans_text`); `full_passage` picks the article."""
    file = split_path(cfg, split, path)
    text_column = "ans_text" if cfg.get("full_passage", False) else "ans_paragraph"
    frame = read_csv(file, ["question", "answer", "doc_id", text_column], "ArchivalQA")
    examples = []
    for line, row in zip(frame.index, frame.itertuples(index=False)):
        answers = split_answers(row.answer, f"{file}, line {line}, column 'answer'")
        examples.append(
            Example(
                text=getattr(row, text_column),
                question=row.question,
                answer=shortest_answer(answers),
                answers=answers,
                doc_id=str(row.doc_id),
                group=str(row.doc_id),
                origin=f"{file} line {line}",
            )
        )
    return group_shuffle(examples, lambda e: e.group, random.Random(cfg.get("shuffle_seed", 0)))


@register("squad")
def load_squad(cfg, split, path=None):
    """SQuAD v1.1 through the `datasets` library. The HF `train` split is cut into the index
    ranges of the config; `test` is the `validation` split. `local_files` (or `path` for one
    split) reads JSON/JSON-lines files in the HF SQuAD schema instead of the hub."""
    import datasets

    source = f"SQuAD file {path}" if path else None
    if path:
        source_split, records = "file", _squad_json(path)
    else:
        source_split = cfg.test_split if split == "test" else "train"
        local = {k: v for k, v in (cfg.get("local_files") or {}).items() if v}
        if local:
            if source_split not in local or not Path(local[source_split]).is_file():
                raise UsageError(
                    f"dataset.local_files.{source_split} is missing or not a file; "
                    "point it at a JSON file in the HF SQuAD schema"
                )
            records = _squad_json(local[source_split])
            source = f"SQuAD file {local[source_split]}"
        else:
            try:
                records = datasets.load_dataset(cfg.hf_name, split=source_split)
            except Exception as err:  # the hub raises many types; all mean "not available here"
                raise UsageError(
                    f"cannot load {cfg.hf_name!r} through the datasets library ({type(err).__name__}); "
                    "when offline, set dataset.local_files.train/validation to JSON files in the HF SQuAD schema"
                ) from None
    missing = [c for c in ("title", "context", "question", "answers") if c not in records.column_names]
    if missing:
        raise UsageError(f"SQuAD records have no {missing[0]!r} field; use files in the HF SQuAD schema")
    if source_split == "train":
        start, stop = cfg.ranges[split]
        records = records.select(range(start, min(stop, len(records))))
    examples = [
        Example(
            text=r["context"],
            question=r["question"],
            answer=shortest_answer(r["answers"]["text"]),
            answers=clean_answers(dict.fromkeys(r["answers"]["text"])),
            doc_id=str(zlib.crc32(r["context"].encode())),
            group=r["title"],
        )
        for r in checked_squad_records(records, source)
    ]
    return group_shuffle(examples, lambda e: e.group, random.Random(cfg.get("shuffle_seed", 0)))


def checked_squad_records(records, source):
    """The records, each checked to have SQuAD's field shapes (strings, and answers as
    {"text": [strings], ...}); a record of another shape is a one-line UsageError naming `source`
    (a local file; None for the hub), the record (its line in a JSON-lines file) and the field."""
    for number, record in enumerate(records, start=1):
        problem = next(
            (
                f"field {name!r} is not text"
                for name in ("title", "context", "question")
                if not isinstance(record[name], str)
            ),
            None,
        )
        answers = record["answers"]
        if problem is None and not (
            isinstance(answers, dict)
            and isinstance(answers.get("text"), list)
            and all(isinstance(a, str) for a in answers["text"])
        ):
            problem = 'field \'answers\' is not {"text": ["...", ...], "answer_start": [...]}'
        if problem:
            raise UsageError(f"{source or 'SQuAD'}, record {number}: {problem}; use the HF SQuAD schema")
        yield record


def _squad_json(path):
    import datasets

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"SQuAD file {path} does not exist; point the option at a JSON file in the HF SQuAD schema")
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as err:  # pyarrow and datasets raise several types for unreadable JSON
        raise UsageError(
            f"SQuAD file {path} is not readable JSON ({type(err).__name__}); "
            "use a JSON or JSON-lines file in the HF SQuAD schema"
        ) from None


def load_web_text(csv_path, limit=None):
    """The unrelated-text sample of the locality term: a CSV with a `raw_text` column."""
    if not csv_path:
        raise UsageError("web_text_csv is not set; point it at a CSV with a raw_text column or set web_text_loc=false")
    frame = read_csv(csv_path, ["raw_text"], "web-text")
    texts = [t for t in frame["raw_text"].tolist() if t.strip()]
    if not texts:
        raise UsageError(f"{csv_path} has no non-empty raw_text rows")
    return texts[:limit] if limit else texts
