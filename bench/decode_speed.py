"""Questions per second of the reference's answer decoding (diverse beam search: 12 beams, 4 groups,
diversity penalty 10, early stopping, 16 new tokens), one question at a time with transformers'
generate as the reference's qa_eval loop runs it (generation_batch_size=1, no padding), against
subroutines.generate_answers on left-padded batches (diverse_beam.search), on the same randomly
initialised GPT-2 (its EOS the tokenizer's), and how many questions get the same answers.

    python bench/decode_speed.py [--questions 64] [--batch-size 16] [--threads 1] [--top-k 1] [--repeats 3]
                                 [--world DIR]

--world DIR: a built tiny world's trained base model and its test questions instead (answers that
end at EOS after a few tokens, as a QA model's do, where the random model runs to the 16-token limit).

The two ways alternate `repeats` times; each one's best (shortest) time counts, the usual estimate
of its cost on a machine whose other load only ever adds time. Prints one JSON line: questions per
CPU second of this process (the fairer measure on a shared machine) and per wall-clock second.
"""

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp_datasets import Example, QACollator  # noqa: E402
from plumbing.errors import usage_errors_exit  # noqa: E402
from subroutines import Decoding, generate_answers  # noqa: E402
from tiny_world.model import train_tokenizer  # noqa: E402

PEOPLE = ["Anna Berg", "Carl Dorn", "Eva Falk", "Gus Hale", "Ida Kern", "Jon Lund", "Kai Moss", "Lea Nord"]
TEMPLATES = [
    "Where did {} open a bakery?",
    "When did {} win the prize for the book about bread?",
    "Who did {} meet in the town where the river turns north?",
    "What did {} sell?",
]


@torch.no_grad()
def one_at_a_time(model, tokenizer, questions, decoding, top_k):
    """The reference's loop: each question alone, unpadded, with its generate arguments."""
    answers = []
    for question in questions:
        ids = tokenizer(question, return_tensors="pt")["input_ids"]
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            use_cache=True,
            max_length=ids.shape[1] + decoding.max_new_tokens,
            num_return_sequences=top_k,
            num_beam_groups=decoding.num_beam_groups,
            num_beams=decoding.beams_for(top_k),
            diversity_penalty=decoding.diversity_penalty,
            early_stopping=True,
            pad_token_id=tokenizer.eos_token_id,
        )
        answers.append([t.strip() for t in tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)])
    return answers


def batched(model, tokenizer, questions, decoding, top_k, batch_size):
    collator = QACollator(tokenizer)
    answers = []
    for start in range(0, len(questions), batch_size):
        examples = [Example(text="", question=q, answer="a", doc_id="") for q in questions[start : start + batch_size]]
        batch = collator(examples)
        answers += generate_answers(model, tokenizer, batch["gen_ids"], batch["gen_mask"], decoding, top_k)
    return answers


def world_parts(root, n_questions):
    """The tokenizer, trained base model and first test questions of a built tiny world."""
    from exp_datasets import load_split
    from plumbing import errors, loading
    from tiny_world.sanity_report import dataset_config

    if not (root / "base_model").is_dir():
        raise errors.UsageError(f"--world {root} has no base_model/; build a world: python -m tiny_world")
    tokenizer = loading.load_tokenizer(root / "base_model")
    model = loading.load_causal_lm(root / "base_model").eval()
    questions = [example.question for example in load_split(dataset_config(root / "data"), "test")[:n_questions]]
    return tokenizer, model, questions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--world", type=Path, help="a built tiny world (base_model/, data/)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import GPT2Config, GPT2LMHeadModel

    if args.world:
        with usage_errors_exit():
            tokenizer, model, questions = world_parts(args.world, args.questions)
    else:
        rng = random.Random(0)
        questions = [rng.choice(TEMPLATES).format(rng.choice(PEOPLE)) for _ in range(args.questions)]
        tokenizer = train_tokenizer(questions * 4 + [" ".join(PEOPLE)] * 4, args.vocab, model_max_length=256)
        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tokenizer),
                n_positions=256,
                n_embd=args.width,
                n_layer=args.layers,
                n_head=4,
                bos_token_id=tokenizer.eos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        ).eval()
    decoding = Decoding()
    runs = {
        "one_at_a_time": lambda: one_at_a_time(model, tokenizer, questions, decoding, args.top_k),
        "batched": lambda: batched(model, tokenizer, questions, decoding, args.top_k, args.batch_size),
    }
    timings, cpu_times, outputs = {}, {}, {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            outputs[name] = run()
            timings[name] = min(timings.get(name, math.inf), time.perf_counter() - started)
            cpu_times[name] = min(cpu_times.get(name, math.inf), time.process_time() - cpu_started)
    same = sum(a == b for a, b in zip(outputs["one_at_a_time"], outputs["batched"]))
    rates = {name: args.questions / seconds for name, seconds in timings.items()}
    cpu_rates = {name: args.questions / seconds for name, seconds in cpu_times.items()}
    print(
        json.dumps(
            dict(
                questions=args.questions,
                batch_size=args.batch_size,
                threads=args.threads,
                top_k=args.top_k,
                repeats=args.repeats,
                model=f"GPT-2 {model.config.n_layer} layers, width {model.config.n_embd}, vocab "
                f"{len(tokenizer)}, {model.num_parameters() / 1e6:.2f}M params"
                + (f", trained ({args.world})" if args.world else ", random"),
                questions_per_s={k: round(v, 2) for k, v in rates.items()},
                speedup=round(rates["batched"] / rates["one_at_a_time"], 2),
                questions_per_cpu_s={k: round(v, 2) for k, v in cpu_rates.items()},
                cpu_speedup=round(cpu_rates["batched"] / cpu_rates["one_at_a_time"], 2),
                identical_answers=f"{same}/{args.questions}",
            )
        )
    )


if __name__ == "__main__":
    main()
