"""CaMeLS from Python (docs/api.md): load a weight model, look at its per-token weights, adapt a base
model on a list of texts with them, and score the adapted model on QA pairs.

    python examples/python_api.py --base-model gpt2 --weight-model path/to/checkpoints/best \
        --documents docs.csv --out outputs/python_api

--documents is a CSV with a `text` column (and optionally `question`, `answers` columns, the answers
separated by a backslash, to score on). Without --weight-model a fresh CaMeLS on the base model's body
is saved and loaded (its zero-initialised head weighs every token alike).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, wherever this runs from

import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from adaptation import adapt  # noqa: E402
from evaluation import score_qa  # noqa: E402
from subroutines import AdaptationSettings  # noqa: E402
from weight_analysis import render_weights  # noqa: E402
from weight_model import CaMeLS, build_weight_model, token_weights  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", required=True, help="AutoModelForCausalLM name or folder")
    parser.add_argument("--weight-model", help="a CaMeLS folder (task=train's checkpoints/best)")
    parser.add_argument("--documents", required=True, help="CSV with a text column (question, answers optional)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", default="outputs/python_api")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    base_model = AutoModelForCausalLM.from_pretrained(args.base_model)

    # 1. a weight model: a saved CaMeLS folder (carries its tokenizer, loads from anywhere)
    if args.weight_model is None:
        fresh = build_weight_model(OmegaConf.create({"name": "CaMeLS", "pretrained_model": args.base_model}), tokenizer)
        args.weight_model = fresh.save_pretrained(out / "weight_model")
    weight_model = CaMeLS.from_pretrained(args.weight_model, tokenizer)

    # 2. per-token weights of a text, rendered (weights.html: shaded text; weights.png: the same as a picture)
    frame = pd.read_csv(args.documents, keep_default_na=False)
    texts = list(dict.fromkeys(frame["text"]))
    weighed = token_weights(weight_model, tokenizer, texts[0])
    top = sorted(zip(weighed.weights, weighed.tokens), reverse=True)[:5]
    print("heaviest tokens of the first document:", ", ".join(f"{t!r} {w:.3f}" for w, t in top))
    render_weights(
        tokenizer,
        [weighed.input_ids],
        [weighed.weights],
        out / "weights.html",
        out / "weights.png",
        titles=["document 0"],
    )

    # 3. adapt the base model on the texts, in order, with those weights (task=adapt's loop)
    pairs = [(q, a.split("\\")[0]) for q, a in zip(frame.get("question", []), frame.get("answers", []))]
    before = score_qa(base_model, tokenizer, pairs)[1] if pairs else None
    result = adapt(base_model, tokenizer, weight_model, texts, AdaptationSettings(lr=args.lr, optimizer="adam"))
    print(f"adapted on {len(texts)} documents: {result['n_steps']} steps, mean weighted loss {result['mean_loss']:.4f}")
    base_model.save_pretrained(out / "adapted")
    tokenizer.save_pretrained(out / "adapted")

    # 4. score the adapted model on QA pairs (greedy answers: EM, F1; answer NLL)
    if pairs:
        after = score_qa(base_model, tokenizer, pairs)[1]
        print(
            f"{len(pairs)} questions: answer NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
            f"EM {before['em']:.3f} -> {after['em']:.3f}, F1 {before['f1']:.3f} -> {after['f1']:.3f}"
        )


if __name__ == "__main__":
    main()
