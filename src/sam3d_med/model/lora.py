"""LoRA adapters (peft) on the flow transformer's attention projections, and optionally its MLPs.

Targets are named as in the official layout: self-attention ``to_qkv``/``to_out`` (per stream),
cross-attention ``to_q``/``to_kv``/``to_out`` (per stream), and with ``include_mlp`` the two MLP
linears. Everything else is frozen, except modules matched by ``trainable_modules`` (regular
expressions over module names in the flow transformer, e.g. ``latent_mapping``).
"""

from __future__ import annotations

import contextlib
import re
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from ..errors import ConfigError
from ..settings import LoraSettings  # the config's lora group, checked as built
from .sam3d import SparseStructureModel

SELF_ATTN_TARGETS = ("to_qkv", "to_out")
CROSS_ATTN_TARGETS = ("to_q", "to_kv", "to_out")
LORA_MARKER = "lora_"




def target_regex(settings: LoraSettings) -> str:
    """A regular expression over the flow transformer's module names that matches only nn.Linear
    layers (peft's ``target_modules`` as a string is matched against the full name)."""
    unknown = set(settings.targets) - set(SELF_ATTN_TARGETS) - set(CROSS_ATTN_TARGETS)
    if unknown:
        raise ConfigError(f"unknown LoRA targets {sorted(unknown)}; choose among to_qkv, to_out, to_q, to_kv")
    parts = []
    self_targets = [t for t in settings.targets if t in SELF_ATTN_TARGETS]
    cross_targets = [t for t in settings.targets if t in CROSS_ATTN_TARGETS]
    if self_targets:
        parts.append(rf"self_attn\.({'|'.join(self_targets)})\.[^.]+")
    if cross_targets:
        parts.append(rf"cross_attn\.[^.]+\.({'|'.join(cross_targets)})")
    if settings.include_mlp:
        parts.append(r"mlp\.[^.]+\.mlp\.(0|2)")
    if not parts:
        raise ConfigError("LoRA needs at least one target")
    return rf"^blocks\.\d+\.({'|'.join(parts)})$"


def apply_lora(model: SparseStructureModel, settings: LoraSettings) -> list[str]:
    """Freeze the model, add adapters to the flow transformer; returns the adapted layer names."""
    if settings.rank < 1:
        raise ConfigError("lora.rank must be at least 1")
    model.requires_grad_(False)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=target_regex(settings), bias="none")
    inject_adapter_in_model(config, model.generator)
    adapted = [name for name, m in model.generator.named_modules() if isinstance(m, LoraLayer)]
    for name, param in model.generator.named_parameters():
        param.requires_grad = LORA_MARKER in name
    for pattern in settings.trainable_modules:
        matched = [n for n, _ in model.generator.named_modules() if n and re.search(pattern, n)]
        if not matched:
            raise ConfigError(f"lora.trainable_modules: {pattern!r} matches no module of the flow transformer")
        for name in matched:
            model.generator.get_submodule(name).requires_grad_(True)
    return adapted


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """Within the block the model computes as its base (every LoRA layer bypassed); afterwards the
    adapters are on again (and trainable, as ``apply_lora`` left them)."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def adapter_state_dict(model: SparseStructureModel) -> dict[str, torch.Tensor]:
    """Only the adapter weights (what a fine-tuning checkpoint needs beyond the base weights)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model.generator).items()}


def load_adapter_state_dict(model: SparseStructureModel, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(model.generator, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ConfigError(f"adapter weights do not fit this model's adapters (first: {unexpected[:3]})")


def merge_lora(model: SparseStructureModel) -> int:
    """Fold every adapter into its base weight and remove the adapter layers, leaving the official
    parameter names (for export with ``save_official_layout``). Returns how many were merged."""
    layers = [(name, m) for name, m in model.generator.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.generator.get_submodule(parent_name) if parent_name else model.generator
        setattr(parent, child, layer.get_base_layer())
    return len(layers)
