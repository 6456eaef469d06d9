"""Peak memory of online adaptation (subroutines.weighted_train, as `run.py task=eval` runs it) on a
random-initialised base model of a published shape, next to the README's estimate:

    python bench/adaptation_memory.py --shape gpt-j-6b --dtype bfloat16 --optimizer adafactor --grad-checkpointing
    python bench/adaptation_memory.py --largest --dtype bfloat16 --optimizer adafactor --grad-checkpointing

One process per measurement. On CUDA the peak is torch.cuda.max_memory_allocated; on CPU (Linux)
it is the process's peak resident memory during adaptation (the peak is reset once the model is
built, so the initialisation's transients do not count) less what it held before the model.
`--largest` tries the shapes from the largest down and reports the first whose adaptation fits (CUDA only).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plumbing.schemas import OPTIMIZERS  # noqa: E402
from subroutines import AdaptationSettings, check_optimizer, weighted_train  # noqa: E402
from weight_model import Uniform  # noqa: E402

# Published shapes (n_layer, n_embd, n_head, vocab, context); GPT-J adds rotary dims and a parallel block
SHAPES = {
    "gpt2": ("gpt2", 12, 768, 12, 50257, 1024),
    "gpt2-medium": ("gpt2", 24, 1024, 16, 50257, 1024),
    "gpt2-large": ("gpt2", 36, 1280, 20, 50257, 1024),
    "gpt2-xl": ("gpt2", 48, 1600, 25, 50257, 1024),
    "gpt-j-6b": ("gptj", 28, 4096, 16, 50400, 2048),
}
BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


def resident_kib(field):
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_resident_peak():
    Path("/proc/self/clear_refs").write_text("5")


def model_config(shape):
    from transformers import GPT2Config, GPTJConfig

    family, n_layer, n_embd, n_head, vocab, context = SHAPES[shape]
    if family == "gpt2":
        return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab, n_positions=context)
    return GPTJConfig(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab, n_positions=context, rotary_dim=64
    )


def estimate_bytes(n_params, dtype, optimizer, batch_size, seq_len, config, grad_checkpointing):
    """The README's formula: weights + gradients + optimizer state + activations + loss logits."""
    w = BYTES[dtype]
    state = {"adam": 2 * w, "sgd": 0, "adafactor": 0, "adam8bit": 2}[optimizer]
    tokens = batch_size * seq_len
    # per layer and token: ~34 hidden-sized values (Korthikanti et al. 2022); with checkpointing
    # one hidden state per layer is kept and one layer's full set is rebuilt at a time
    per_layer = tokens * config.n_embd * w
    layers = config.n_layer * per_layer * (1 if grad_checkpointing else 34) + (
        34 * per_layer if grad_checkpointing else 0
    )
    logits = 3 * tokens * config.vocab_size * 4  # logits, their float32 copy, and its gradient
    return n_params * (2 * w + state) + layers + logits


def measure(shape, dtype, optimizer, batch_size, seq_len, grad_checkpointing, device, steps):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = model_config(shape)
    baseline_kib = resident_kib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())
    if device.type == "cpu":
        reset_resident_peak()

    class RandomDocuments:  # stands in for the dataset's collator: full-length random documents
        max_text_len = seq_len

        def encode_texts(self, texts):
            ids = torch.randint(0, config.vocab_size, (len(texts), seq_len))
            return ids, torch.ones_like(ids)

    started = time.time()
    weighted_train(
        model,
        Uniform(),
        ["document"] * batch_size * steps,
        RandomDocuments(),
        device,
        AdaptationSettings(optimizer=optimizer, lr=1e-5, batch_size=batch_size),
        progress=False,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = (resident_kib("VmHWM") - baseline_kib) * 1024
    estimate = estimate_bytes(n_params, dtype, optimizer, batch_size, seq_len, config, grad_checkpointing)
    return dict(
        shape=shape,
        n_params=n_params,
        dtype=str(dtype).replace("torch.", ""),
        optimizer=optimizer,
        grad_checkpointing=grad_checkpointing,
        batch_size=batch_size,
        seq_len=seq_len,
        device=str(device),
        peak_gib=round(peak / 2**30, 2),
        estimate_gib=round(estimate / 2**30, 2),
        s_per_step=round((time.time() - started) / steps, 2),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="gpt2")
    parser.add_argument("--largest", action="store_true", help="the largest shape that fits (CUDA)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adafactor")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=1024, help="document length in tokens (datasets: 1024)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    check_optimizer(args.optimizer)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes = list(SHAPES)[::-1] if args.largest else [args.shape]
    for shape in shapes:
        try:
            result = measure(
                shape, dtype, args.optimizer, args.batch_size, args.seq_len, args.grad_checkpointing, device, args.steps
            )
        except torch.OutOfMemoryError:
            print(json.dumps(dict(shape=shape, fits=False)), flush=True)
            torch.cuda.empty_cache()
            continue
        print(json.dumps(dict(result, fits=True)), flush=True)
        return


if __name__ == "__main__":
    main()
