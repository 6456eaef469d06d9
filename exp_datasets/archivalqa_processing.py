"""Build the ArchivalQA split CSVs from the ArchivalQA question files and the NYT Annotated Corpus.

Every question names its paragraph as `para_id` = `<doc_id>_<para_num>` (para_num counts the
`<p>` elements of the article's full text from 0). Each question is joined to its article, gets
that paragraph (`ans_paragraph`), the whole article (`ans_text`), `doc_id`, `para_num`, `title`,
`date` (YYYY-MM-DD) and `year`, and lands in the split of its publication year. The output files
are the ones conf/dataset/archivalqa.yaml reads.

    python -m exp_datasets.archivalqa_processing --questions ArchivalQA_train.csv ArchivalQA_val.csv \
        ArchivalQA_test.csv --nyt /path/to/nyt_corpus/data --out data/archivalqa

`--questions` also takes a folder (all its *.csv); `--nyt` is the corpus' folder of
year/month/day/<doc_id>.xml files or of the .tgz archives it ships as.
"""

import argparse
import html.entities
import json
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from plumbing.environment import REPO_ROOT
from plumbing.errors import UsageError, first_line, run_cli
from plumbing.files import atomic_path, atomic_write_text

DATASET_CONFIG = REPO_ROOT / "conf" / "dataset" / "archivalqa.yaml"
# Inclusive publication-year ranges of the splits (the published setup)
SPLIT_YEARS = {
    "qa_train": (1987, 1990),
    "qa_val": (1991, 1992),
    "train": (1993, 2001),
    "val": (2002, 2003),
    "test": (2004, 2007),
}
QUESTION_COLUMNS = ("question", "answer", "para_id")
ADDED_COLUMNS = ("doc_id", "para_num", "date", "year", "title", "ans_paragraph", "ans_text")
REPORT_NAME = "archivalqa_report.json"
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz")
PARAGRAPH_SEPARATOR = "\n"
HTML_ENTITIES = {name: chr(code) for name, code in html.entities.name2codepoint.items()}


@dataclass
class Article:
    doc_id: str
    title: str
    date: str
    year: int
    paragraphs: list


def normalize_doc_id(raw) -> str:
    """NYT file names and id-strings are zero-padded ("0148748"), ArchivalQA's para_ids are not."""
    text = str(raw).strip()
    return str(int(text)) if text.isdigit() else text


def split_file_names(dataset_config=DATASET_CONFIG):
    from omegaconf import OmegaConf

    files = OmegaConf.load(dataset_config).files
    return {split: files[split] for split in SPLIT_YEARS}


# ---------------------------------------------------------------------------------------------
# Questions


def question_files(paths):
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.csv"))
            if not found:
                raise UsageError(
                    f"question folder {path} holds no .csv files; point --questions at the ArchivalQA CSVs"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"question file {path} does not exist; point --questions at the ArchivalQA CSVs")
    return files


def read_question_file(path):
    """One ArchivalQA CSV with its column names stripped and lower-cased (exports differ in case
    and pandas index columns); fails naming the first missing column."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UsageError(
            f"{path} is not a readable CSV ({first_line(err)}); give the ArchivalQA question CSVs"
        ) from None
    frame = frame.loc[:, [not c.startswith("Unnamed:") for c in frame.columns]]
    frame.columns = [c.strip().lower() for c in frame.columns]
    missing = [c for c in QUESTION_COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(
            f"{path} has no column {missing[0]!r} (columns: {', '.join(frame.columns)}); "
            f"an ArchivalQA question file needs {', '.join(QUESTION_COLUMNS)}"
        )
    # these come from the article; a stale copy in the input would be ambiguous
    clashing = [c for c in ADDED_COLUMNS if c in frame.columns]
    return frame.drop(columns=clashing)


_PARA_ID = re.compile(r"^\s*(.+)_(\d+)\s*$")


def read_questions(paths):
    """All question files as one frame with `doc_id` and `para_num` taken from `para_id`;
    rows whose para_id does not parse get NaN there (counted later, not dropped silently)."""
    frames = [read_question_file(path) for path in question_files(paths)]
    questions = pd.concat(frames, ignore_index=True)
    parts = questions["para_id"].str.extract(_PARA_ID)
    questions["doc_id"] = parts[0].map(lambda d: normalize_doc_id(d) if isinstance(d, str) else None)
    questions["para_num"] = pd.to_numeric(parts[1], errors="coerce")
    return questions


# ---------------------------------------------------------------------------------------------
# NYT articles (NITF XML)


def _text(element):
    return "".join(element.itertext()).strip() if element is not None else ""


def parse_nitf(data, source="<bytes>") -> Article:
    """Doc id, headline, publication date and full-text paragraphs of one NYT corpus article."""
    # The NITF DTD is not loaded, so named character entities are resolved from HTML's table
    parser = ET.XMLParser()
    parser.entity.update(HTML_ENTITIES)
    try:
        root = ET.fromstring(data, parser=parser)
    except ET.ParseError as err:
        raise UsageError(f"{source} is not well-formed XML ({err}); is --nyt the NYT corpus folder?") from None
    doc_id_element = root.find(".//doc-id")
    if doc_id_element is None or not doc_id_element.get("id-string"):
        raise UsageError(f"{source} has no <doc-id id-string=...>; is --nyt the NYT corpus folder?")
    meta = {m.get("name"): m.get("content", "") for m in root.iter("meta")}
    date = _publication_date(meta, root.find(".//pubdata"), source)
    title = _text(root.find(".//hedline/hl1")) or _text(root.find("./head/title"))
    paragraphs = [
        _text(p) for block in root.iter("block") if block.get("class") == "full_text" for p in block.iter("p")
    ]
    return Article(
        doc_id=normalize_doc_id(doc_id_element.get("id-string")),
        title=title,
        date=date,
        year=int(date[:4]),
        paragraphs=paragraphs,
    )


def _publication_date(meta, pubdata, source):
    parts = [meta.get(k, "").strip() for k in ("publication_year", "publication_month", "publication_day_of_month")]
    if all(p.isdigit() for p in parts):
        year, month, day = map(int, parts)
        return f"{year:04d}-{month:02d}-{day:02d}"
    stamp = pubdata.get("date.publication", "") if pubdata is not None else ""
    if len(stamp) >= 8 and stamp[:8].isdigit():
        return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}"
    raise UsageError(f"{source} has no publication date (publication_* meta or pubdata date.publication)")


def _archive_name(path):
    return any(path.name.endswith(suffix) for suffix in ARCHIVE_SUFFIXES)


def _wanted(name, wanted_ids):
    """Corpus files are named <doc_id>.xml, so unwanted ones are skipped unread; a name that is
    not a number is always read and its <doc-id> decides."""
    stem = Path(name).name[: -len(".xml")]
    return not stem.isdigit() or normalize_doc_id(stem) in wanted_ids


def iter_nyt_xml(nyt_root, wanted_ids):
    """(source name, XML bytes) of the articles under `nyt_root` that may be wanted, from plain
    .xml files and from .tgz archives, walking the folders in sorted order."""
    progress = tqdm(desc="NYT files", unit="file")
    for folder, subfolders, files in os.walk(nyt_root):
        subfolders.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if name.endswith(".xml"):
                progress.update()
                if _wanted(name, wanted_ids):
                    yield str(path), path.read_bytes()
            elif _archive_name(path):
                with tarfile.open(path, "r:*") as archive:
                    for member in archive:
                        if not (member.isfile() and member.name.endswith(".xml")):
                            continue
                        progress.update()
                        if _wanted(member.name, wanted_ids):
                            yield f"{path}:{member.name}", archive.extractfile(member).read()
    progress.close()


def load_articles(nyt_root, wanted_ids):
    """Articles whose doc id is in `wanted_ids`, keyed by normalised doc id (first copy wins),
    and the problems of the files that could not be parsed (one bad file among a million should
    cost its questions, not the run)."""
    articles, unreadable = {}, []
    for source, data in iter_nyt_xml(nyt_root, wanted_ids):
        try:
            article = parse_nitf(data, source)
        except UsageError as err:
            unreadable.append(str(err))
            continue
        if article.doc_id in wanted_ids and article.doc_id not in articles:
            articles[article.doc_id] = article
    return articles, unreadable


# ---------------------------------------------------------------------------------------------
# Join and split


def join_articles(questions, articles):
    """Questions with their article's fields added, the rows that cannot be used removed, and a
    count (with examples) of every kind of removed row."""
    report = {"questions": len(questions)}

    def drop(mask, reason):
        nonlocal questions
        report[reason] = int(mask.sum())
        if mask.any():
            report[f"{reason}_examples"] = questions.loc[mask, "para_id"].head(5).tolist()
        questions = questions.loc[~mask]

    drop(questions["doc_id"].isna() | questions["para_num"].isna(), "bad_para_id")
    drop(~questions["doc_id"].isin(articles.keys()), "article_missing")
    paragraph_counts = pd.Series(
        [len(articles[d].paragraphs) for d in questions["doc_id"]], index=questions.index, dtype=int
    )
    drop(questions["para_num"] >= paragraph_counts, "paragraph_missing")
    if questions.empty:
        report["joined"] = 0
        return questions, report

    questions = questions.copy()
    questions["para_num"] = questions["para_num"].astype(int)
    rows = [articles[d] for d in questions["doc_id"]]
    questions["date"] = [a.date for a in rows]
    questions["year"] = [a.year for a in rows]
    questions["title"] = [a.title for a in rows]
    questions["ans_paragraph"] = [a.paragraphs[n] for a, n in zip(rows, questions["para_num"])]
    questions["ans_text"] = [PARAGRAPH_SEPARATOR.join(a.paragraphs) for a in rows]
    empty = (
        (questions["question"].str.strip() == "")
        | (questions["answer"].str.strip() == "")
        | (questions["ans_paragraph"].str.strip() == "")
    )
    drop(empty, "empty_question_answer_or_paragraph")

    # An answer that is not in its paragraph would point at misnumbered paragraphs
    answer_column = "org_answer" if "org_answer" in questions.columns else "answer"
    report["answer_in_paragraph"] = int(
        sum(a.strip() in p for a, p in zip(questions[answer_column], questions["ans_paragraph"]))
    )
    report["joined"] = len(questions)
    return questions, report


def split_by_year(joined, split_years=SPLIT_YEARS):
    """One frame per split, rows ordered by doc id then paragraph (stable, so questions on one
    paragraph keep their input order), columns: added ones first, the question file's after."""
    numeric_id = pd.to_numeric(joined["doc_id"], errors="coerce")
    ordered = (
        joined.assign(_numeric_id=numeric_id)
        .sort_values(["_numeric_id", "doc_id", "para_num"], kind="stable")
        .drop(columns="_numeric_id")
    )
    first = ["doc_id", "para_num", "date", "year", "title", "question", "answer"]
    last = ["ans_paragraph", "ans_text"]
    columns = first + [c for c in ordered.columns if c not in first + last] + last
    ordered = ordered[columns]
    splits = {split: ordered[ordered["year"].between(lo, hi)] for split, (lo, hi) in split_years.items()}
    outside = len(ordered) - sum(len(f) for f in splits.values())
    return splits, outside


# ---------------------------------------------------------------------------------------------
# Entry point


def process(questions, nyt, out, split_years=SPLIT_YEARS, dataset_config=DATASET_CONFIG):
    """Write the split CSVs (names from `dataset_config`) and archivalqa_report.json to `out`;
    returns the report (counts of rows per split and of every dropped kind of row)."""
    nyt, out = Path(nyt), Path(out)
    if not nyt.is_dir():
        raise UsageError(f"NYT corpus folder {nyt} does not exist; point --nyt at the corpus' data folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the split CSVs")
    file_names = split_file_names(dataset_config)
    unknown = [s for s in split_years if s not in file_names]
    if unknown:
        raise UsageError(f"split {unknown[0]!r} has no file in {dataset_config}; use {', '.join(file_names)}")
    table = read_questions(questions)

    articles, unreadable = load_articles(nyt, set(table["doc_id"].dropna()))
    joined, report = join_articles(table, articles)
    report["unreadable_files"] = len(unreadable)
    if unreadable:
        report["unreadable_files_examples"] = unreadable[:5]
    if report["joined"] == 0:
        raise UsageError(
            f"none of the {report['questions']} questions matched a usable NYT article under {nyt} "
            f"({report['article_missing']} without article, {len(unreadable)} unreadable files); "
            "point --nyt at the corpus' data folder"
        )
    splits, report["outside_split_years"] = split_by_year(joined, split_years)
    report["articles_found"] = len(articles)
    report["splits"] = {
        split: {
            "file": file_names[split],
            "questions": len(frame),
            "documents": int(frame["doc_id"].nunique()),
            "paragraphs": int(frame[["doc_id", "para_num"]].drop_duplicates().shape[0]),
        }
        for split, frame in splits.items()
    }

    for split, frame in splits.items():
        with atomic_path(out / file_names[split]) as tmp:
            frame.to_csv(tmp, index=False)
    atomic_write_text(json.dumps(report, indent=2) + "\n", out / REPORT_NAME)
    _print_report(report, out)
    return report


def _print_report(report, out):
    print(f"{report['joined']} of {report['questions']} questions joined to {report['articles_found']} articles")
    if report["unreadable_files"]:
        print(f"  skipped {report['unreadable_files']} unreadable files, e.g. {report['unreadable_files_examples'][0]}")
    for reason in (
        "bad_para_id",
        "article_missing",
        "paragraph_missing",
        "empty_question_answer_or_paragraph",
        "outside_split_years",
    ):
        if report.get(reason):
            examples = report.get(f"{reason}_examples")
            print(f"  dropped {report[reason]}: {reason}" + (f" (e.g. {', '.join(examples)})" if examples else ""))
    print(f"  answer found in its paragraph: {report['answer_in_paragraph']} of {report['joined']}")
    for split, info in report["splits"].items():
        print(f"  {split:8s} {out / info['file']}: {info['questions']} questions, {info['documents']} articles")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", nargs="+", required=True, help="ArchivalQA question CSVs (or folders of them)")
    parser.add_argument("--nyt", required=True, help="NYT Annotated Corpus folder (.xml files or .tgz archives)")
    parser.add_argument("--out", help="output folder (default: data_dir of the dataset config)")
    parser.add_argument(
        "--dataset-config", default=str(DATASET_CONFIG), help="dataset config whose `files` name the outputs"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = args.out
    if out is None:
        from omegaconf import OmegaConf

        out = OmegaConf.load(args.dataset_config).data_dir
    try:
        process(args.questions, args.nyt, out, dataset_config=args.dataset_config)
    except (OSError, tarfile.TarError) as err:
        raise UsageError(f"{first_line(err)}; check the --questions, --nyt and --out paths") from None


if __name__ == "__main__":
    run_cli(main)
