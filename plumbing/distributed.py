"""Data-parallel meta-training under torchrun (`torchrun --nproc_per_node=N run.py task=train ...`).

torchrun starts N copies of run.py and tells each its rank through the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). Every rank builds the same weight model and walks the
same batch order; of the grad_acc_steps micro-batches of one outer step, rank r trains on the
contiguous block r*grad_acc_steps/N ... (r+1)*grad_acc_steps/N - 1, the weight-model gradients are
summed over ranks, and every rank then takes the same optimiser step. Rank 0 alone validates,
logs and writes. Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op.
"""

import atexit
import functools
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def env_rank():
    return int(os.environ.get("RANK", 0))


def env_world_size():
    return int(os.environ.get("WORLD_SIZE", 1))


def follower_overrides():
    """Hydra overrides for a rank other than 0: no run folder, no .hydra copy, no log file of its own
    (rank 0 writes them; the ranks agree on rank 0's folder through `broadcast_object`)."""
    if env_rank() == 0:
        return []
    return ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def init(device, timeout_min):
    """Join the torchrun process group (nccl on CUDA, gloo on CPU); returns the device this rank
    uses (cuda:LOCAL_RANK on a multi-GPU node). A single process returns `device` unchanged."""
    if env_world_size() <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_min))
    atexit.register(dist.destroy_process_group)
    return device


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return rank() == 0


def main_only(method):
    """A method that runs on rank 0 alone (elsewhere it does nothing and returns None)."""

    @functools.wraps(method)
    def on_rank_0(*args, **kwargs):
        return method(*args, **kwargs) if is_main() else None

    return on_rank_0


def own_state(ranks, resume_from):
    """This rank's entry of a checkpoint's per-rank states (None for a one-process run); refuses a
    checkpoint written by another number of ranks."""
    n_ranks = len(ranks or [None])
    if n_ranks != world_size():
        from plumbing.errors import UsageError

        raise UsageError(
            f"resume_from={resume_from} was trained by {n_ranks} process(es); resume it with as many "
            f"(torchrun --nproc_per_node={n_ranks}, or plain python for 1)"
        )
    return ranks[rank()] if n_ranks > 1 else None


def check_grad_acc_steps(grad_acc_steps):
    """Every rank takes an equal share of each outer step's micro-batches."""
    if grad_acc_steps % env_world_size():
        from plumbing.errors import UsageError

        raise UsageError(
            f"grad_acc_steps={grad_acc_steps} must be divisible by the number of torchrun ranks "
            f"({env_world_size()}): each rank takes an equal share of every outer step"
        )


def owns(position, grad_acc_steps):
    """Whether this rank trains on micro-batch `position` (0-based) of an outer step."""
    return position // (grad_acc_steps // world_size()) == rank()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def broadcast_parameters(parameters):
    """Every rank starts from rank 0's values (the ranks must hold the same weight model)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for p in parameters:
            dist.broadcast(p.data, src=0)


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def sum_gradients(parameters):
    """Sum the accumulated .grad of `parameters` over ranks, in one flat buffer. Each rank's
    gradients are already divided by grad_acc_steps, so the sum is the single-process accumulation."""
    if world_size() == 1:
        return
    parameters = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(parameters, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
