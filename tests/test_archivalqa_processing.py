"""ArchivalQA processing on a small fake NYT corpus tree and question files written here."""

import html
import io
import json
import stat
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from exp_datasets import archivalqa_processing as aqp
from exp_datasets import load_split
from plumbing.environment import REPO_ROOT
from plumbing.errors import UsageError, run_cli

NOTEBOOK = REPO_ROOT / "ArchivalQA_processing.ipynb"


def nitf(id_string, date, title, paragraphs, date_in_meta=True):
    """An article in the NYT corpus' NITF layout (lead paragraph and full text in separate blocks)."""
    year, month, day = date
    meta = (
        (
            f'<meta content="{day}" name="publication_day_of_month"/>'
            f'<meta content="{month}" name="publication_month"/>'
            f'<meta content="{year}" name="publication_year"/>'
        )
        if date_in_meta
        else ""
    )
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE nitf SYSTEM "http://www.nitf.org/IPTC/NITF/3.3/specification/dtd/nitf-3-3.dtd">
<nitf change.date="June 10, 2005" change.time="19:30" version="-//IPTC//DTD NITF 3.3//EN">
  <head>
    <title>{title} (head)</title>
    {meta}
    <docdata><doc-id id-string="{id_string}"/></docdata>
    <pubdata date.publication="{year:04d}{month:02d}{day:02d}T000000" name="The New York Times"/>
  </head>
  <body>
    <body.head><hedline><hl1>{title}</hl1></hedline></body.head>
    <body.content>
      <block class="lead_paragraph"><p>LEAD: not part of the full text.</p></block>
      <block class="full_text">
        {body}
      </block>
    </body.content>
  </body>
</nitf>
""".encode()


# doc id -> (date, title, full-text paragraphs)
ARTICLES = {
    "0000005": ((1987, 1, 2), "Lead Story", ["Alpha one.", "Alpha two &amp; more.", "Alpha three."]),
    "0148748": ((1988, 5, 26), "Tenneco Sale", ["Tenneco met today.", "It will sell its oil unit."]),
    "0700001": ((1991, 3, 4), "Paris Talks", ["Talks were held in paris."]),
    "0900000": ((1995, 7, 8), "Harbor", ["The harbor opened."]),
    "1400000": ((2002, 11, 12), "Election", ["Polls opened.", "Smith won the seat &mdash; narrowly."]),
    "1700000": ((2005, 2, 3), "Storm", ["A storm hit Ohio."]),
    "1800000": ((2006, 12, 31), "Year End", ["The year ended calmly."]),
}
# The text each paragraph has once parsed (character entities decoded)
PARAGRAPHS = {doc.lstrip("0"): [html.unescape(p) for p in paras] for doc, (_, _, paras) in ARTICLES.items()}


def write_corpus(root: Path):
    """year/month/day/<id>.xml files, except 2006 which ships as a .tgz archive of day folders."""
    for doc, (date, title, paragraphs) in ARTICLES.items():
        year, month, day = date
        xml = nitf(doc, date, title, paragraphs, date_in_meta=doc != "0700001")
        if year == 2006:
            archive_path = root / f"{year}" / f"{month:02d}.tgz"
            archive_path.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive_path, "w:gz") as archive:
                info = tarfile.TarInfo(f"{day:02d}/{doc}.xml")
                info.size = len(xml)
                archive.addfile(info, io.BytesIO(xml))
        else:
            path = root / f"{year}" / f"{month:02d}" / f"{day:02d}" / f"{doc}.xml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(xml)
    # Nobody asks about this file, so it must be skipped without being parsed
    (root / "1987" / "01" / "02" / "0000777.xml").write_text("not xml at all")
    # A wanted article that is corrupt, and an XML file that is no article: both are reported
    (root / "1987" / "01" / "02" / "0000042.xml").write_text("<nitf><head>cut off")
    (root / "docs").mkdir()
    (root / "docs" / "index.xml").write_text("<index><entry/></index>")


QUESTION_COLUMNS = [
    "id",
    "question",
    "answer",
    "org_answer",
    "answer_start",
    "para_id",
    "trans_que",
    "trans_ans",
    "source",
]


def question_row(qid, question, answer, para_id, org_answer=None):
    return [qid, question, answer, org_answer or answer, "0", para_id, "0", "0", "wiki"]


def write_questions(folder: Path):
    """Two files in the real ArchivalQA schema; the second with a pandas index column and its
    header in another case and column order, as re-exported files often are."""
    folder.mkdir(parents=True)
    train = pd.DataFrame(
        [
            question_row("train_0", "When will Tenneco sell?", "May 26, 1988", "148748_1", "today"),
            question_row("train_1", "Who met?", "Tenneco", "148748_0"),
            question_row("train_2", "What is third?", "Alpha three", "5_2"),
            question_row("train_3", "What is first?", "Alpha one", "5_0"),
            question_row("train_4", "What is first again?", "Alpha", "5_0"),
            question_row("train_5", "Where were talks held?", "paris", "700001_0"),
            question_row("train_6", "What opened?", "The harbor", "900000_0"),
            question_row("train_7", "Which article is gone?", "None", "1234567_0"),
            question_row("train_8", "Which paragraph is gone?", "None", "900000_9"),
            question_row("train_9", "Bad id?", "None", "nonsense"),
            question_row("train_10", "Is the file corrupt?", "Yes", "42_0"),
        ],
        columns=QUESTION_COLUMNS,
    )
    train.to_csv(folder / "ArchivalQA_train.csv", index=False)
    test = pd.DataFrame(
        [
            question_row("test_0", "Who won?", "Smith", "1400000_1"),
            question_row("test_1", "Where did the storm hit?", "Ohio", "1700000_0"),
            question_row("test_2", "How did the year end?", "calmly", "1800000_0"),
        ],
        columns=QUESTION_COLUMNS,
    )
    test = test.rename(columns={"question": "Question", "answer": "Answer", "para_id": " Para_ID "})
    test[list(reversed(test.columns))].to_csv(folder / "ArchivalQA_test.csv", index=True)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("archivalqa")
    write_corpus(root / "nyt" / "data")
    questions = write_questions(root / "questions")
    report = aqp.process([questions], root / "nyt" / "data", root / "out")
    return root, report


def archival_cfg(data_dir, full_passage):
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "dataset" / "archivalqa.yaml")
    cfg.data_dir = str(data_dir)
    cfg.full_passage = full_passage
    return cfg


def test_split_files_are_the_ones_the_dataset_config_reads(built):
    root, report = built
    files = OmegaConf.load(REPO_ROOT / "conf" / "dataset" / "archivalqa.yaml").files
    written = sorted(p.name for p in (root / "out").iterdir())
    assert written == sorted([*files.values(), aqp.REPORT_NAME])
    sizes = {split: len(pd.read_csv(root / "out" / files[split])) for split in aqp.SPLIT_YEARS}
    assert sizes == {"qa_train": 5, "qa_val": 1, "train": 1, "val": 1, "test": 2}
    assert {s: info["questions"] for s, info in report["splits"].items()} == sizes
    # the atomic writes leave ordinary file permissions, not the temporary file's private ones
    plain = root / "out" / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE((root / "out" / files["test"]).stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    plain.unlink()


def test_dropped_questions_are_counted_and_reported(built):
    root, report = built
    assert report["questions"] == 14
    assert report["bad_para_id"] == 1 and report["bad_para_id_examples"] == ["nonsense"]
    assert report["article_missing"] == 2 and report["article_missing_examples"] == ["1234567_0", "42_0"]
    assert report["unreadable_files"] == 2
    assert any("0000042.xml is not well-formed XML" in e for e in report["unreadable_files_examples"])
    assert any("index.xml has no <doc-id" in e for e in report["unreadable_files_examples"])
    assert report["paragraph_missing"] == 1 and report["paragraph_missing_examples"] == ["900000_9"]
    assert report["joined"] == 10 and report["outside_split_years"] == 0
    assert json.loads((root / "out" / aqp.REPORT_NAME).read_text()) == report
    # org_answer "today" of train_0 is not in its paragraph; every other answer is
    assert report["answer_in_paragraph"] == 9


def test_rows_carry_article_fields_in_doc_then_paragraph_order(built):
    root, _ = built
    rows = pd.read_csv(root / "out" / "qa_train.csv", dtype=str, keep_default_na=False)
    # numeric doc order (5 before 148748), paragraph order, input order inside a paragraph
    assert rows["id"].tolist() == ["train_3", "train_4", "train_2", "train_1", "train_0"]
    assert rows["doc_id"].tolist() == ["5", "5", "5", "148748", "148748"]
    assert rows["para_num"].tolist() == ["0", "0", "2", "0", "1"]
    for row in rows.itertuples():
        paragraphs = PARAGRAPHS[row.doc_id]
        assert row.ans_paragraph == paragraphs[int(row.para_num)]
        assert row.ans_text == "\n".join(paragraphs)
        assert "LEAD" not in row.ans_text
    assert rows["date"].tolist()[::3] == ["1987-01-02", "1988-05-26"]
    assert rows["year"].tolist()[::3] == ["1987", "1988"]
    assert rows["title"].tolist()[::3] == ["Lead Story", "Tenneco Sale"]
    # original ArchivalQA columns travel along
    assert rows.loc[rows["id"] == "train_0", "org_answer"].item() == "today"


def test_date_from_pubdata_and_articles_from_tgz_archives(built):
    root, _ = built
    qa_val = pd.read_csv(root / "out" / "qa_val.csv", dtype=str)
    assert qa_val[["doc_id", "date", "year"]].values.tolist() == [["700001", "1991-03-04", "1991"]]
    test = pd.read_csv(root / "out" / "test.csv", dtype=str)
    assert test["doc_id"].tolist() == ["1700000", "1800000"]
    assert test["ans_paragraph"].tolist() == ["A storm hit Ohio.", "The year ended calmly."]
    assert test["date"].tolist() == ["2005-02-03", "2006-12-31"]
    val = pd.read_csv(root / "out" / "val.csv", dtype=str)
    assert val["ans_paragraph"].tolist() == ["Smith won the seat \u2014 narrowly."]  # &mdash; outside XML's own five
    # columns of the re-cased second file were matched
    assert test["question"].tolist() == ["Where did the storm hit?", "How did the year end?"]


@pytest.mark.parametrize("full_passage", [False, True])
def test_output_loads_through_the_archivalqa_config(built, full_passage):
    root, _ = built
    cfg = archival_cfg(root / "out", full_passage)
    examples = load_split(cfg, "qa_train")
    assert len(examples) == 5
    by_doc = {}
    for example in examples:
        by_doc.setdefault(example.doc_id, []).append(example)
    # a document's questions stay together and in paragraph order after the group shuffle
    assert [e.doc_id for e in examples] in (["5"] * 3 + ["148748"] * 2, ["148748"] * 2 + ["5"] * 3)
    assert [e.question for e in by_doc["5"]] == ["What is first?", "What is first again?", "What is third?"]
    for doc_id, group in by_doc.items():
        for example, para_num in zip(group, (0, 0, 2) if doc_id == "5" else (0, 1)):
            expected = "\n".join(PARAGRAPHS[doc_id]) if full_passage else PARAGRAPHS[doc_id][para_num]
            assert example.text == expected
    qa_val = load_split(cfg, "qa_val")
    assert [e.answer for e in qa_val] == ["Paris"]  # capitalised by the config
    assert len(load_split(cfg, "test")) == 2


def test_missing_question_column_names_it(tmp_path):
    (tmp_path / "nyt").mkdir()
    frame = pd.DataFrame({"question": ["Q?"], "answer": ["A"], "paragraph_id": ["5_0"]})
    frame.to_csv(tmp_path / "q.csv", index=False)
    with pytest.raises(UsageError, match=r"q\.csv has no column 'para_id'"):
        aqp.process([tmp_path / "q.csv"], tmp_path / "nyt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_inputs_are_usage_errors(tmp_path):
    write_questions(tmp_path / "questions")
    with pytest.raises(UsageError, match="NYT corpus folder .*nope does not exist"):
        aqp.process([tmp_path / "questions"], tmp_path / "nope", tmp_path / "out")
    (tmp_path / "nyt").mkdir()
    with pytest.raises(UsageError, match="question file .*absent.csv does not exist"):
        aqp.process([tmp_path / "absent.csv"], tmp_path / "nyt", tmp_path / "out")
    # a corpus folder without any of the articles: nothing joins, nothing is written
    with pytest.raises(UsageError, match="none of the 14 questions matched"):
        aqp.process([tmp_path / "questions"], tmp_path / "nyt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_splits_and_reports_errors_in_one_line(tmp_path, capsys):
    write_corpus(tmp_path / "nyt")
    write_questions(tmp_path / "questions")
    questions = [
        str(tmp_path / "questions" / "ArchivalQA_train.csv"),
        str(tmp_path / "questions" / "ArchivalQA_test.csv"),
    ]
    aqp.main(["--questions", *questions, "--nyt", str(tmp_path / "nyt"), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "dropped 2: article_missing (e.g. 1234567_0, 42_0)" in printed
    assert "skipped 2 unreadable files" in printed
    assert len(pd.read_csv(tmp_path / "out" / "test.csv")) == 2
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: aqp.main(["--questions", str(tmp_path / "x.csv"), "--nyt", str(tmp_path / "nyt")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "x.csv does not exist" in err


def test_notebook_runs_the_module_with_its_parameters(built, tmp_path):
    root, _ = built
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    assert "parameters" in cells[0]["metadata"].get("tags", [])
    namespace = {}
    exec("".join(cells[0]["source"]), namespace)
    assert {"QUESTIONS", "NYT_DIR", "OUT_DIR"} <= namespace.keys()
    namespace.update(QUESTIONS=[str(root / "questions")], NYT_DIR=str(root / "nyt" / "data"), OUT_DIR=str(tmp_path))
    for cell in cells[1:]:
        exec("".join(cell["source"]), namespace)
    assert namespace["split_sizes"]["questions"].to_dict() == {
        "qa_train": 5,
        "qa_val": 1,
        "train": 1,
        "val": 1,
        "test": 2,
    }
    assert (tmp_path / "qa_train.csv").read_text() == (root / "out" / "qa_train.csv").read_text()
