"""Which torch device a run uses: one rule for training, evaluation and every command."""

from __future__ import annotations

import logging
import os
import re

import torch

from .errors import ConfigError

log = logging.getLogger("sam3d_med.train")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when there is a GPU, else the CPU, said in the log), ``cpu``, ``cuda`` (this
    process's GPU: ``local_rank``) or ``cuda:N``; asking for a GPU that is not there is one line naming
    the GPUs there are."""
    if name == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        log.info("device=auto picked %s%s", device, "" if device.type == "cuda" else " (no CUDA device visible)")
        return device
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", str(name))
    if not match:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N (got {name!r})")
    index = int(match.group(1)) if match.group(1) is not None else local_rank
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        there = ", ".join(f"{i} ({torch.cuda.get_device_name(i)})" for i in range(count)) or "none"
        raise ConfigError(f"device={name}: there is no CUDA GPU {index}; GPUs visible here: {there}"
                          + (f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"
                             if "CUDA_VISIBLE_DEVICES" in os.environ else "")
                          + ("" if count else "; use device=cpu or device=auto"))
    return torch.device(f"cuda:{index}")
