"""Peak memory and seconds per meta-training batch against the unroll depth (update_batch_size,
one sequential inner step per document) and the base model's size, for each way of taking the
meta-gradient: plain backprop (torch_func), checkpointed (torch_func + grad_checkpointing, the
fast weights kept every 1, 2 or 3 steps: checkpoint_every) and the forward-mode estimate (forward,
K probes, alone or correcting a first-order meta-gradient: forward_mix). A benchmark, not a test:

    python bench/meta_memory.py                      # CPU, 1 thread, small bases
    python bench/meta_memory.py --device cuda --sizes 6x768 --vocab 50257 --doc-len 200

Memory: each (base, depth, method) in a fresh subprocess, the peak while one batch runs above
what the process held once the models and the batch were built: on CPU the peak resident set
size (VmHWM, reset before the batch, with glibc's mmap threshold fixed: MALLOC_ENV), on CUDA
torch.cuda.max_memory_allocated. Time: one subprocess per (base, depth) in which the methods take
turns, the fastest of --repeats rounds.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = {  # name -> (inner_backend, grad_checkpointing, checkpoint_every, forward_probes, forward_mix)
    "plain": ("torch_func", False, 1, 1, False),
    "checkpointed": ("torch_func", True, 1, 1, False),
    "checkpointed2": ("torch_func", True, 2, 1, False),
    "checkpointed3": ("torch_func", True, 3, 1, False),
    "forward1": ("forward", False, 1, 1, False),
    "forward4": ("forward", False, 1, 4, False),
    "forward1mix": ("forward", False, 1, 1, True),
}
# glibc returns freed blocks above the mmap threshold to the system at once; its default threshold
# grows with the blocks freed, and blocks below it stay cached in the heap, where a later batch
# reuses them unseen by the peak resident set size. A fixed threshold makes that peak follow the
# bytes in use.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def current_rss_mib():
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def reset_peak_rss():
    """Sets the process's peak resident set size (VmHWM) to its current size (Linux 4.0+), so
    that a peak reached while the models were built does not count."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_mib():
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def build(args, size, depth, doc_len=None):
    """Base model, weight model and one batch of `depth` documents (one question each)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    from weight_model import CaMeLS

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    doc_len = doc_len or args.doc_len
    n_layer, n_embd = (int(x) for x in size.split("x"))

    def config(layers, width):
        return GPT2Config(
            vocab_size=args.vocab,
            n_positions=max(args.doc_len, args.qa_len),
            n_embd=width,
            n_layer=layers,
            n_head=max(1, width // 64),
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            attn_implementation="eager",
        )

    base = GPT2LMHeadModel(config(n_layer, n_embd)).to(device).eval()
    body_layers, body_width = (int(x) for x in args.weight_model.split("x"))
    weight_model = CaMeLS(GPT2Model(config(body_layers, body_width)), head_width=32).to(device).train()
    with torch.no_grad():  # a non-uniform head, as after some training
        weight_model.head[2].weight.normal_(0, 0.1)
    text_ids = torch.randint(0, args.vocab, (depth, doc_len), device=device)
    qa_ids = torch.randint(0, args.vocab, (depth, args.qa_len), device=device)
    qa_labels = torch.full_like(qa_ids, -100)
    qa_labels[:, -4:] = qa_ids[:, -4:]
    loc_ids = torch.randint(0, args.vocab, (1, doc_len), device=device)
    batch = dict(
        text_ids=text_ids,
        text_mask=torch.ones_like(text_ids),
        qa_ids=qa_ids,
        qa_mask=torch.ones_like(qa_ids),
        qa_labels=qa_labels,
    )
    loc = {"web_text": (loc_ids, torch.ones_like(loc_ids))}
    return weight_model, base, batch, loc


def settings(args, method):
    from meta_objective import MetaSettings

    backend, checkpointing, every, probes, mix = METHODS[method]
    return MetaSettings(
        inner_lr=1e-3,
        sequential_update=True,
        max_text_len=args.doc_len,
        c_kl=0.1,
        backend=backend,
        grad_checkpointing=checkpointing,
        checkpoint_every=every,
        forward_probes=probes,
        forward_mix=mix,
        inner_autocast=args.autocast,
    )


def one_batch(args, models, method):
    import torch

    from meta_objective import accumulate_meta_gradient

    weight_model, base, batch, loc = models
    began = time.perf_counter()
    accumulate_meta_gradient(weight_model, base, batch, loc, settings(args, method))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    weight_model.zero_grad(set_to_none=True)
    return time.perf_counter() - began


def peak_memory(args, size, depth, method):
    """MiB: the peak while one batch runs, above what was held before it. A first batch of one
    8-token document loads the code paths, so that their one-time cost is not counted."""
    import torch

    one_batch(args, build(args, size, 1, doc_len=8), method)
    models = build(args, size, depth)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        one_batch(args, models, method)
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    start = current_rss_mib()
    reset_peak_rss()
    one_batch(args, models, method)
    return peak_rss_mib() - start


def seconds(args, size, depth, methods):
    """Seconds per batch of each method: the fastest of `repeats` rounds, the methods taking turns
    (on a shared machine the load changes less between turns than between processes)."""
    models = build(args, size, depth)
    times = {method: [] for method in methods}
    for _ in range(args.repeats):
        for method in methods:
            times[method].append(one_batch(args, models, method))
    return {method: min(values) for method, values in times.items()}


def run_self(*request):
    command = [sys.executable, __file__, "--one", json.dumps(request)]
    command += [arg for arg in sys.argv[1:] if not arg.startswith("--one")]
    env = dict(os.environ, **MALLOC_ENV) if request[0] == "memory" else None
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default="2x128,4x256", help="base models, n_layer x n_embd, comma separated")
    parser.add_argument("--depths", default="1,2,4,6,12,24")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--weight-model", default="2x64", help="the weight model's body, n_layer x n_embd")
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--doc-len", type=int, default=64, help="tokens per document (and locality text)")
    parser.add_argument("--qa-len", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (the fastest is reported)")
    parser.add_argument("--autocast", default=None, help="inner_autocast, e.g. bfloat16")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, size, depth, methods = json.loads(args.one)
        result = peak_memory(args, size, depth, methods) if kind == "memory" else seconds(args, size, depth, methods)
        print(json.dumps(result))
        return

    methods = args.methods.split(",")
    print(
        f"device={args.device} threads={args.threads} vocab={args.vocab} doc_len={args.doc_len} "
        f"weight_model={args.weight_model} autocast={args.autocast} repeats={args.repeats}"
    )
    print("| base | depth | method | peak MiB | s/batch | peak / plain | time / plain |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for depth in (int(d) for d in args.depths.split(",")):
            try:
                times = run_self("seconds", size, depth, methods)
            except RuntimeError as err:
                print(f"| {size} | {depth} | all | failed: {err} | | | |", flush=True)
                continue
            peaks = {}
            for method in methods:
                try:
                    peaks[method] = run_self("memory", size, depth, method)
                except RuntimeError as err:
                    print(f"| {size} | {depth} | {method} | failed: {err} | | | |", flush=True)
                    continue
                ratios = (
                    f"{peaks[method] / peaks['plain']:.2f} | {times[method] / times['plain']:.2f}"
                    if "plain" in peaks
                    else " | "
                )
                print(
                    f"| {size} | {depth} | {method} | {peaks[method]:.0f} | {times[method]:.2f} | {ratios} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
