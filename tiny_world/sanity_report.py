"""The build's sanity report: what the base model knows, and how much one document's update
teaches it under different token weightings (the phenomenon CaMeLS exists for)."""

import json
import random
import re

import torch
from tqdm import tqdm

from exp_datasets.answer_spans import span_token_mask
from subroutines import AdaptationSettings, evaluate_qa, restore_parameters, snapshot_parameters, weighted_train
from util import answer_nll

NUMBER_OR_CAPITALISED = re.compile(r"\b(?:[A-Z][a-z]+|\d[\d,]*)\b")
SCHEMES = ("uniform", "oracle", "salient")


def answer_spans(document):
    """Character spans of the answers inside a Document's text (every statement of each)."""
    from exp_datasets.answer_spans import answer_char_spans

    return sorted({span for e in document.examples for span in answer_char_spans(e)})


@torch.no_grad()
def answer_nlls(model, collator, examples, batch_size=64):
    """Per-question mean NLL of the answer tokens."""
    values = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collator.encode_qa([e.question for e in chunk], [e.answer for e in chunk])
        ids, mask, labels = (t.to(model.device) for t in batch)
        values.append(answer_nll(model(input_ids=ids, attention_mask=mask).logits, labels, reduction="none"))
    return torch.cat(values)


def qa_scores(model, tokenizer, collator, examples, progress=False):
    """Greedy EM/F1 and answer NLL, through the evaluation code every entry point uses."""
    _, summary = evaluate_qa(
        model, tokenizer, examples, collator, model.device, eval_modes=("em", "ppl"), batch_size=64, progress=progress
    )
    return dict(em=summary["em"], f1=summary["f1"], nll=summary["nll"], n=summary["n_questions"])


def token_weights(scheme, tokenizer, text, spans, max_text_len):
    """Weights of one document's tokens; every scheme has the total mass of uniform weights.

    oracle: mass only on tokens overlapping an answer span; salient: on capitalised words and
    numbers (a cheap stand-in for named-entity spans).
    """
    if scheme == "salient":
        spans = [(m.start(), m.end()) for m in NUMBER_OR_CAPITALISED.finditer(text)]
    elif scheme not in ("oracle", "uniform"):
        raise ValueError(f"unknown weighting scheme {scheme!r}")
    chosen = span_token_mask(tokenizer, text, spans, max_text_len).float()
    n = len(chosen)
    if scheme == "uniform":
        return torch.ones(n)
    # weighted_lm_loss scores targets 1..n-1, so the mass is matched over those positions
    chosen[0] = 0.0
    if chosen.sum() == 0:
        return torch.ones(n)
    return chosen * (n - 1) / chosen.sum()


class FixedWeights(torch.nn.Module):
    """A weighting given in advance for each document (one of SCHEMES), looked up by the document's
    tokens: subroutines.weighted_train adapts with it as with any weight model."""

    def __init__(self, collator, texts, weights):
        super().__init__()
        self.table = {tuple(ids): w for ids, w in zip(collator.text_tokens(texts), weights)}

    def forward(self, input_ids, attention_mask):
        weights = torch.zeros(input_ids.shape)
        for row, length in enumerate(attention_mask.sum(1).tolist()):
            weights[row, :length] = self.table[tuple(input_ids[row, :length].tolist())]
        return weights


def adapt(model, collator, documents, weights, optimizer, lr, grad_clip):
    """The online adaptation of run.py task=eval (one step per document, in order) with fixed weights."""
    texts = [d.text for d in documents]
    weighted_train(
        model,
        FixedWeights(collator, texts, weights),
        texts,
        collator,
        model.device,
        AdaptationSettings(optimizer=optimizer, lr=lr, grad_clip_thresh=grad_clip),
        progress=False,
    )


def one_step_uptake(model, tokenizer, collator, documents, unrelated, lrs, progress=True):
    """Per (scheme, lr): mean drop of the answer NLL of a document's questions after one SGD step
    on that document alone (from the base model each time), and the mean rise of answer NLL on
    unrelated QA pairs. Returns all rows and each scheme's row at its best lr."""
    start = snapshot_parameters(model)
    unrelated_before = answer_nlls(model, collator, unrelated).mean().item()
    before = [answer_nlls(model, collator, d.examples).mean().item() for d in documents]
    rows = []
    bar = tqdm(
        total=len(SCHEMES) * len(lrs) * len(documents), desc="one-step uptake", disable=not progress, mininterval=2
    )
    for scheme in SCHEMES:
        weights = [token_weights(scheme, tokenizer, d.text, answer_spans(d), collator.max_text_len) for d in documents]
        for lr in lrs:
            drops, rises = [], []
            for doc, doc_weights, doc_before in zip(documents, weights, before):
                # plain SGD without clipping: the step is exactly lr x the weighted loss's gradient
                adapt(model, collator, [doc], [doc_weights], "sgd", lr, grad_clip=float("inf"))
                drops.append(doc_before - answer_nlls(model, collator, doc.examples).mean().item())
                rises.append(answer_nlls(model, collator, unrelated).mean().item() - unrelated_before)
                restore_parameters(model, start)
                bar.update()
            rows.append(
                dict(
                    scheme=scheme,
                    lr=lr,
                    answer_nll_drop=sum(drops) / len(drops),
                    unrelated_nll_rise=sum(rises) / len(rises),
                )
            )
    bar.close()
    best = [max((r for r in rows if r["scheme"] == s), key=lambda r: r["answer_nll_drop"]) for s in SCHEMES]
    return rows, best


def stream_adaptation(model, tokenizer, collator, streams, schemes, lrs, grad_clip, progress=True):
    """Adam on each stream of documents, one step per document (batch 1), then every question of
    that stream is asked: EM/F1/NLL per (scheme, lr) as means over the streams (each from the base
    model), with each stream's EM, and before any update (scheme "none")."""
    start = snapshot_parameters(model)
    questions = [[e for d in docs for e in d.examples] for docs in streams]

    def row(scheme, lr, scores):
        mean = {k: sum(s[k] for s in scores) / len(scores) for k in ("em", "f1", "nll")}
        return dict(
            scheme=scheme, lr=lr, **mean, n=sum(s["n"] for s in scores), em_per_stream=[s["em"] for s in scores]
        )

    rows = [row("none", 0.0, [qa_scores(model, tokenizer, collator, examples) for examples in questions])]
    bar = tqdm(
        total=len(schemes) * len(lrs) * len(streams), desc="stream adaptation", disable=not progress, mininterval=2
    )
    for scheme in schemes:
        weights = [
            [token_weights(scheme, tokenizer, d.text, answer_spans(d), collator.max_text_len) for d in docs]
            for docs in streams
        ]
        for lr in lrs:
            scores = []
            for docs, stream_weights, examples in zip(streams, weights, questions):
                adapt(model, collator, docs, stream_weights, "adam", lr, grad_clip)
                scores.append(qa_scores(model, tokenizer, collator, examples))
                restore_parameters(model, start)
                bar.update()
            rows.append(row(scheme, lr, scores))
    bar.close()
    return rows


def dataset_config(data_dir):
    """conf/dataset/tiny_world.yaml (one source of the length limits) pointed at `data_dir`."""
    from omegaconf import OmegaConf

    from plumbing.environment import REPO_ROOT
    from plumbing.schemas import DATASET_SCHEMAS

    cfg = OmegaConf.load(REPO_ROOT / "conf" / "dataset" / "tiny_world.yaml")
    cfg.pop("defaults")  # what Hydra's composition would apply: the schema, below
    cfg.data_dir = str(data_dir)
    cfg.web_text_csv = str(data_dir / "web_text.csv")
    return OmegaConf.merge(OmegaConf.structured(DATASET_SCHEMAS["tiny_world"]), cfg)


def answer_token_share(tokenizer, documents, max_text_len):
    """Fraction of document tokens that overlap an answer span."""
    chosen = total = 0
    for doc in documents:
        weights = token_weights("oracle", tokenizer, doc.text, answer_spans(doc), max_text_len)
        chosen += int((weights > 0).sum())
        total += len(weights) - 1
    return chosen / total


def build_report(cfg, folder, progress=True):
    """The report stage of the build: report.json and report.md in `folder`."""
    from exp_datasets import QACollator, load_split, to_documents
    from plumbing.environment import pick_device
    from plumbing.loading import load_causal_lm, load_tokenizer

    report_cfg = cfg.report
    device = pick_device(cfg.get("device", "auto"))
    tokenizer = load_tokenizer(folder / "base_model")
    model = load_causal_lm(folder / "base_model").to(device).eval()
    dataset_cfg = dataset_config(folder / "data")
    collator = QACollator.from_config(tokenizer, dataset_cfg)
    rng = random.Random(cfg.seed)

    def sample(examples, n):
        return examples if len(examples) <= n else rng.sample(examples, n)

    pretrain_qa = load_split(dataset_cfg, "qa_train", folder / "data" / "pretrain_qa.csv")
    sets = {
        "trained": sample(pretrain_qa, report_cfg.n_qa),
        "document_only": sample(load_split(dataset_cfg, "qa_val"), report_cfg.n_qa),
        "unseen": sample(load_split(dataset_cfg, "test"), report_cfg.n_qa),
    }
    qa = {name: qa_scores(model, tokenizer, collator, examples, progress) for name, examples in sets.items()}
    test_docs = to_documents(load_split(dataset_cfg, "test"))
    rng.shuffle(test_docs)
    n_one, n_stream, n_streams = report_cfg.one_step.n_docs, report_cfg.stream.n_docs, report_cfg.stream.n_streams
    one_step_rows, one_step_best = one_step_uptake(
        model,
        tokenizer,
        collator,
        test_docs[:n_one],
        sample(pretrain_qa, report_cfg.one_step.n_unrelated),
        list(report_cfg.one_step.lrs),
        progress,
    )
    streams = [test_docs[n_one + i * n_stream : n_one + (i + 1) * n_stream] for i in range(n_streams)]
    stream_rows = (
        stream_adaptation(
            model,
            tokenizer,
            collator,
            streams,
            list(report_cfg.stream.schemes),
            list(report_cfg.stream.lrs),
            report_cfg.stream.grad_clip,
            progress,
        )
        if n_stream
        else []
    )
    pretraining = json.loads((folder / "base_model" / "pretraining.json").read_text())
    test_lengths = [len(tokenizer(d.text, verbose=False)["input_ids"]) for d in test_docs]
    report = dict(
        base_model=dict(
            params=pretraining["params"],
            pretraining_seconds=pretraining["seconds"],
            final_loss=pretraining["loss_curve"][-1],
            device=pretraining["device"],
        ),
        data=dict(
            answer_token_share=answer_token_share(tokenizer, test_docs, collator.max_text_len),
            mean_test_document_tokens=sum(test_lengths) / len(test_lengths),
            max_test_document_tokens=max(test_lengths),
            mean_pretraining_document_tokens=pretraining["mean_document_tokens"],
        ),
        qa=qa,
        one_step=dict(rows=one_step_rows, best=one_step_best),
        stream=stream_rows,
        stream_setup=dict(n_docs=n_stream, n_streams=n_streams),
    )
    report["summary"] = summary_line(report)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(markdown(report))
    if progress:
        print(markdown(report))


def best_stream_rows(rows):
    best = {}
    for row in rows:
        if row["scheme"] not in best or row["em"] > best[row["scheme"]]["em"]:
            best[row["scheme"]] = row
    return best


def summary_line(report):
    qa = report["qa"]
    drops = ", ".join(f"{r['scheme']} {r['answer_nll_drop']:.2f}" for r in report["one_step"]["best"])
    line = (
        f"base model {report['base_model']['params'] / 1e6:.2f}M params; EM trained/document-only/unseen "
        f"{qa['trained']['em']:.2f}/{qa['document_only']['em']:.2f}/{qa['unseen']['em']:.2f}; "
        f"one-step answer-NLL drop at best lr: {drops}"
    )
    if report["stream"]:
        best = best_stream_rows(report["stream"])
        line += "; stream EM " + ", ".join(f"{s} {r['em']:.3f}" for s, r in best.items())
    return line


def markdown(report):
    qa = report["qa"]
    lines = [
        "# Tiny world: sanity report",
        "",
        f"Base model: {report['base_model']['params'] / 1e6:.2f}M parameters, pretrained in "
        f"{report['base_model']['pretraining_seconds']:.0f}s on {report['base_model']['device']} "
        f"(final loss {report['base_model']['final_loss']:.3f}). Answer tokens are "
        f"{100 * report['data']['answer_token_share']:.1f}% of the tokens of test documents, which average "
        f"{report['data']['mean_test_document_tokens']:.0f} tokens (max {report['data']['max_test_document_tokens']}); "
        f"pretraining documents average {report['data']['mean_pretraining_document_tokens']:.0f}.",
        "",
        "## What the base model knows (greedy EM/F1, answer NLL)",
        "",
        "| QA pairs | n | EM | F1 | answer NLL |",
        "|---|---|---|---|---|",
    ]
    titles = {
        "trained": "(a) pretrained on (pretrain_qa)",
        "document_only": "(b) read, never asked (qa_val)",
        "unseen": "(c) unseen test facts",
    }
    for name, title in titles.items():
        s = qa[name]
        lines.append(f"| {title} | {s['n']} | {s['em']:.3f} | {s['f1']:.3f} | {s['nll']:.3f} |")
    lines += [
        "",
        "## One SGD step on one held-out document",
        "",
        "Mean drop of the document's answer NLL (nats) and rise of NLL on unrelated QA pairs; "
        "every scheme has the total weight mass of uniform weights. * = best lr of the scheme.",
        "",
        "| scheme | lr | answer NLL drop | unrelated NLL rise |",
        "|---|---|---|---|",
    ]
    for r in report["one_step"]["rows"]:
        star = (
            " *" if any(b["scheme"] == r["scheme"] and b["lr"] == r["lr"] for b in report["one_step"]["best"]) else ""
        )
        lines.append(
            f"| {r['scheme']}{star} | {r['lr']:g} | {r['answer_nll_drop']:.3f} | {r['unrelated_nll_rise']:.3f} |"
        )
    if report["stream"]:
        setup = report["stream_setup"]
        best = best_stream_rows(report["stream"])
        lines += [
            "",
            "## Stream: Adam, one step per document, then every question of the stream",
            "",
            f"{setup['n_streams']} disjoint streams of {setup['n_docs']} test documents, each adapted from the "
            "base model; means over the streams, and each stream's EM.",
            "",
            "| scheme | lr | EM | F1 | answer NLL | EM per stream |",
            "|---|---|---|---|---|---|",
        ]
        for r in report["stream"]:
            per_stream = " ".join(f"{em:.3f}" for em in r["em_per_stream"])
            lines.append(
                f"| {r['scheme']} | {r['lr']:g} | {r['em']:.3f} | {r['f1']:.3f} | {r['nll']:.3f} | {per_stream} |"
            )
        if "oracle" in best and "uniform" in best:
            gap = 100 * (best["oracle"]["em"] - best["uniform"]["em"])
            lines += [
                "",
                f"Headroom (each scheme at its best lr on these streams): oracle EM "
                f"{100 * best['oracle']['em']:.1f}%, uniform {100 * best['uniform']['em']:.1f}%, "
                f"gap {gap:.1f} points.",
            ]
    return "\n".join(lines) + "\n"
