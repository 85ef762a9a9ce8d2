"""Processes and gradients across ranks: the process group, DDP / FSDP wrapping of the student,
gradient averaging and clipping that equal a single process, and reductions of counters.

One process per device, started by ``torchrun`` (or plainly, for one device). The trainer calls
these and never ``torch.distributed`` directly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["DistEnv", "init_distributed", "pick_device", "wrap_student", "average_grads", "clip_grad_norm", "all_reduce_sum",
           "barrier"]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group ``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPU).

    ``timeout_s`` (``run.collective_timeout_s``) bounds every collective, the rendezvous included. It must
    exceed the longest time one rank can spend alone, such as rank 0's evaluation every ``run.eval_every``
    steps while the others wait in the next collective; torch's own default is 30 min for gloo and 10 min
    for NCCL.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    target = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistEnv(rank, world_size, target)


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``: this process's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def wrap_student(module: nn.Module, env: DistEnv, strategy: str) -> tuple[nn.Module, list[nn.Parameter]]:
    """``(wrapped module, replicated parameters)`` for ``strategy`` ``ddp`` or ``fsdp``.

    FSDP shards the token encoder block by block; the frozen VQ / text tower and the scalar logit
    parameters (FSDP cannot shard 0-d tensors) stay whole on every rank. The trainable ones among
    those are returned as *replicated*: their gradients must be averaged with :func:`average_grads`.
    """
    if env.world_size == 1:
        return module, []
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids), []
    from timm.models.vision_transformer import Block
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    model = module.model
    scalars = [p for p in (model.logit_scale, model.logit_bias) if p is not None]
    ignored = [*model.vq.parameters(), *model.text.parameters(), *scalars]
    wrapped = FullyShardedDataParallel(module, auto_wrap_policy=ModuleWrapPolicy({Block}), use_orig_params=True,
                                       ignored_states=ignored, device_id=env.device)
    return wrapped, [p for p in scalars if p.requires_grad]


def average_grads(params: Sequence[nn.Parameter], world_size: int) -> None:
    """Average the gradients of parameters that no wrapper synchronises."""
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world_size


def clip_grad_norm(module: nn.Module, replicated: Sequence[nn.Parameter], max_norm: float,
                   sharded: bool) -> torch.Tensor:
    """Clip the global gradient norm so that it equals a single process's: under FSDP the shards' squared
    norms are summed across ranks, and the replicated parameters are counted once."""
    replicated_ids = {id(p) for p in replicated}
    params = [p for p in module.parameters() if p.grad is not None and id(p) not in replicated_ids]
    if not sharded:  # DDP / one process: every rank holds the whole, averaged gradient
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.stack([p.grad.float().pow(2).sum() for p in params]).sum()
    dist.all_reduce(total)
    replicated = [p for p in replicated if p.grad is not None]
    norm = (total + sum(p.grad.float().pow(2).sum() for p in replicated)).sqrt()
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params + replicated:
        p.grad.mul_(scale)
    return norm


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The sum of ``tensor`` over ranks, in place (the tensor itself when there is one process)."""
    if env.world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()
