#!/usr/bin/env python
"""One LoRA training step of the sparse-structure flow transformer: time and peak memory.

The condition embedder is frozen (its tokens are computed without gradients, as in fine-tuning);
forward + backward go through the flow transformer with LoRA adapters; random weights. For each
batch size, with and without gradient checkpointing: median step time over --repeats steps (after
--warmup), samples/s and its ratio against the first row, and peak GPU memory (CUDA only).

    python benchmarks/bench_model.py                                   # tiny preset on CPU
    python benchmarks/bench_model.py --preset sam3d --device cuda --dtype bf16 --batch 1,2,4
"""

from __future__ import annotations

import argparse

import torch
from _timing import timed_steps

from sam3d_med.model.flow_matching import flow_matching_loss
from sam3d_med.model.lora import LoraSettings, apply_lora, trainable_parameters
from sam3d_med.model.sam3d import SparseStructureModel


def make_inputs(model, batch, device, dtype):
    cfg = model.cfg
    size = cfg.image_vit.img_size
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=g).to(device=device, dtype=dtype)

    inputs = {"image": rand(batch, 3, size, size), "rgb_image": rand(batch, 3, size, size),
              "mask": rand(batch, 1, size, size), "rgb_image_mask": rand(batch, 1, size, size),
              "pointmap": rand(batch, 3, cfg.point.input_size, cfg.point.input_size),
              "rgb_pointmap": rand(batch, 3, cfg.point.input_size, cfg.point.input_size)}
    targets = {k: torch.randn(batch, *s, generator=g).to(device=device, dtype=dtype)
               for k, s in model.generator.latent_shapes().items()}
    return inputs, targets


def run(model, batch, checkpointing, device, dtype, warmup, repeats):
    for block in model.generator.blocks:
        block.use_checkpoint = checkpointing
    inputs, targets = make_inputs(model, batch, device, dtype)
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-4)

    def step():
        with torch.no_grad():
            cond = model.condition_embedder(**inputs)
        flow_matching_loss(model.generator, targets, cond, model.cfg.objective).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed_steps(step, device, warmup, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", default="1,2")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = SparseStructureModel.from_preset(args.preset, device=device)
    model.to(dtype)
    apply_lora(model, LoraSettings(rank=args.rank))
    model.train()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"LoRA step (rank {args.rank}), preset {args.preset}, {args.dtype}, {name}; median of {args.repeats} "
          f"after {args.warmup} warm-up steps; torch {torch.__version__}")
    print(f"{'batch':>5} {'checkpointing':>13} {'s/step':>8} {'samples/s':>9} {'vs first':>8} {'peak GiB':>8}")
    reference = None
    for batch in (int(b) for b in args.batch.split(",")):
        for checkpointing in (False, True):
            try:
                seconds, peak = run(model, batch, checkpointing, device, dtype, args.warmup, args.repeats)
            except torch.OutOfMemoryError:
                print(f"{batch:>5} {str(checkpointing):>13} {'out of memory':>36}")
                torch.cuda.empty_cache()
                continue
            reference = reference or batch / seconds
            print(f"{batch:>5} {str(checkpointing):>13} {seconds:>8.3f} {batch / seconds:>9.2f} "
                  f"{batch / seconds / reference:>8.2f} {peak:>8.2f}")


if __name__ == "__main__":
    main()
