"""Multi-process training helpers (torchrun + DistributedDataParallel).

``torchrun --nproc_per_node N main.py --mode train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; :func:`init_distributed` reads them when WORLD_SIZE > 1 (backend nccl on CUDA, gloo on CPU).
Every network that is trained is wrapped in ``DistributedDataParallel`` (default, non-static graph): Stage II
calls G three times and D twice before one backward (each parameter's gradient is still accumulated once per
backward, which DDP needs) and differentiates R1's input gradient (double backward). ``static_graph=True`` gives
WRONG discriminator gradients with R1 (measured: tests/anonymizer/test_ddp.py compares with one process on the
joint batch in a 2-process gloo run), so it is not used. Only rank 0 writes files.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """Process placement. ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group described by torchrun's environment variables, if WORLD_SIZE > 1.

    Args:
        device: the requested device; for CUDA the local rank's GPU is used instead.

    Returns:
        (DistInfo, device of this process).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    log.info("distributed: rank %d / %d on %s", rank, world, device)
    return DistInfo(rank, world, local_rank), device


def wrap_ddp(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else the module itself."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average scalar logs over ranks (identity when not distributed)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
