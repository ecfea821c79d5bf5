#!/usr/bin/env python
"""One LoRA training step of the sparse-structure stage: time and peak memory.

Random weights at the preset's sizes (``sam3d``: the release, Dino at 770 px, 14,152 condition
tokens), built like the release (no SS encoder: shape targets are given, as decoder inversion gives
them). The step is the trainer's: frozen condition embedder under no_grad, LoRA on the flow
transformer, and with ``--objective full`` (default) the decoded 3-D loss terms (the one-step
estimate through the frozen decoder, slice consistency + surface-weighted BCE + soft Dice), then
AdamW on the adapters. Inputs are random crops of ``--crop`` px (the Dino wrapper resizes them).

``--weights fp32``: the model in float32 under bf16 autocast (the trainer today); ``bf16``: the
frozen weights in bfloat16, adapters and optimizer state in float32, bf16 autocast.

For each batch size, with and without gradient checkpointing: median step time over --repeats
steps (after --warmup), samples/s and its ratio against the first row, peak GPU memory (CUDA).

    python benchmarks/bench_model.py                                                  # tiny on CPU
    python benchmarks/bench_model.py --preset sam3d --device cuda --weights bf16 --batch 1,2,4
"""

from __future__ import annotations

import argparse
import json

import torch
from _timing import timed_steps

from sam3d_med.model.config import get_preset
from sam3d_med.model.flow_matching import flow_matching_loss
from sam3d_med.model.lora import LoraSettings, apply_lora, trainable_parameters
from sam3d_med.model.sam3d import SparseStructureModel
from sam3d_med.train.losses import CONDITION_KEYS, LossWeights, TrainingObjective
from sam3d_med.train.memory import synthetic_batch as make_batch


def build(preset: str, device, weights: str, rank: int) -> SparseStructureModel:
    torch.manual_seed(0)
    with torch.device(device):
        model = SparseStructureModel(get_preset(preset), with_encoder=False)
    if weights == "bf16":
        model.to(torch.bfloat16)
    apply_lora(model, LoraSettings(rank=rank))
    for p in trainable_parameters(model).values():  # adapters and their optimizer state in float32
        p.data = p.data.float()
    return model.train()


def run(model, batch, checkpointing, device, objective_kind, crop, warmup, repeats, autocast, frame="object"):
    for block in model.generator.blocks:
        block.use_checkpoint = checkpointing
    data = make_batch(model, batch, crop, device)
    objective = TrainingObjective(model, LossWeights(), frame)
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-4)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            if objective_kind == "full":
                loss = objective(data)["total"]
            else:
                with torch.no_grad():
                    cond = model.condition_embedder(**{k: data[k] for k in CONDITION_KEYS})
                loss = flow_matching_loss(model.generator, model.latent_targets(shape_latents=data["shape_latent"]),
                                          cond, model.cfg.objective).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed_steps(step, device, warmup, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--objective", default="full", choices=["full", "flow"])
    parser.add_argument("--frame", default="object", choices=["object", "volume"])
    parser.add_argument("--batch", default="1,2")
    parser.add_argument("--checkpointing", default="off,on", help="gradient checkpointing settings to run")
    parser.add_argument("--crop", type=int, default=None, help="input crop size (default: 256 for sam3d, 64 tiny)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    crop = args.crop or (256 if args.preset == "sam3d" else 64)
    model = build(args.preset, device, args.weights, args.rank)
    autocast = device.type == "cuda" or args.weights == "bf16"  # bf16 weights need autocast on a CPU too
    cfg = model.cfg
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"LoRA training step ({args.objective} objective, rank {args.rank}), preset {args.preset}: Dino input "
          f"{cfg.image_vit.input_size} px, {cfg.condition_tokens:,d} condition tokens; weights {args.weights}"
          f"{', bf16 autocast' if autocast else ''}; crop {crop}; {name}; median of {args.repeats} after "
          f"{args.warmup} warm-up steps; torch {torch.__version__}")
    print(f"{'batch':>5} {'checkpointing':>13} {'s/step':>8} {'samples/s':>9} {'vs first':>8} {'peak GiB':>8}")
    rows, reference = [], None
    for batch in (int(b) for b in args.batch.split(",")):
        for checkpointing in (c == "on" for c in args.checkpointing.split(",")):
            try:
                seconds, peak = run(model, batch, checkpointing, device, args.objective, crop, args.warmup, args.repeats,
                                    autocast, args.frame)
            except torch.OutOfMemoryError:
                print(f"{batch:>5} {str(checkpointing):>13} {'out of memory':>36}", flush=True)
                rows.append({"batch": batch, "checkpointing": checkpointing, "oom": True})
                torch.cuda.empty_cache()
                continue
            reference = reference or batch / seconds
            rows.append({"batch": batch, "checkpointing": checkpointing, "seconds": seconds, "peak_gib": peak})
            print(f"{batch:>5} {str(checkpointing):>13} {seconds:>8.3f} {batch / seconds:>9.2f} "
                  f"{batch / seconds / reference:>8.2f} {peak:>8.2f}", flush=True)
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump({"args": vars(args), "device": name, "torch": torch.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
