#!/usr/bin/env python
"""The cost of fine-tuning and evaluating at the real scale: a cost model you can check.

For a preset at its sizes (default ``sam3d``, the release: Dino at 770 px, 14,152 condition tokens),
counted on the meta device (no memory, no weights) with ``torch.utils.flop_counter``:

- FLOPs of one training sample: the frozen condition embedder's forward, the flow transformer's
  forward and backward with LoRA, and the decoded 3-D loss terms (decoder forward and backward);
- FLOPs of one evaluation reconstruction: the embedder, ``steps`` sampler steps of the flow (two
  passes where guidance applies), the decoder;
- peak memory for batch 1/2/4 with and without gradient checkpointing: ``train.memory``'s estimate
  (static: frozen weights in bf16, LoRA adapters with gradients and AdamW state in float32; per
  sample: what autograd saves, attention as the memory-efficient kernels keep it), the one the
  trainer uses to switch checkpointing on.

Then, for the data set (``--train_cases`` cases x ``--classes``; an epoch is every (case, class) pair
once, ``data.epoch=pairs``) and ``--test_cases`` test cases (one reconstruction per class and
slicing axis): samples per epoch, hours per epoch, for ``--epochs`` epochs and for the test set's
evaluation, at a stated sustained rate (``--tflops``). Where measured GPU figures exist
(``benchmarks/gpu/*/train_bf16.json``, ``inference.json``) they are printed beside the estimates.

    python benchmarks/bench_scale.py
    python benchmarks/bench_scale.py --tflops 300 --train_cases 596 --test_cases 150 --epochs 50
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from sam3d_med.model.config import get_preset
from sam3d_med.model.flow_matching import time_grid
from sam3d_med.model.lora import LoraSettings, apply_lora
from sam3d_med.model.sam3d import SparseStructureModel, condition_of
from sam3d_med.train.losses import LossWeights, TrainingObjective
from sam3d_med.train.memory import GiB, SAFETY, estimate_training_memory
from sam3d_med.train.memory import synthetic_batch as make_batch

REPO = Path(__file__).resolve().parents[1]


def build(preset: str, rank: int) -> SparseStructureModel:
    with torch.device("meta"):
        model = SparseStructureModel(get_preset(preset), with_encoder=False)
    apply_lora(model, LoraSettings(rank=rank))
    return model.train()


def meta_batch(model, batch: int, crop: int, num_slices: int = 1, streams: str = "all") -> dict:
    """``train.memory.synthetic_batch`` on the meta device (which further slices are there stays real)."""
    return make_batch(model, batch, crop, "meta", num_slices, streams)


def training_flops(model, crop: int, num_slices: int = 1, streams: str = "all") -> float:
    """FLOPs of one training sample (batch 1), forward and backward, on the meta device."""
    batch = meta_batch(model, 1, crop, num_slices, streams)
    with FlopCounterMode(display=False) as counter:
        TrainingObjective(model, LossWeights())(batch)["total"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def reconstruction(model, crop: int, num_slices: int = 1, streams: str = "all") -> tuple[float, int]:
    """(FLOPs of one sampled reconstruction with the model's sampler settings (batch 1), condition tokens)."""
    sampler = model.cfg.sampler
    inputs = condition_of(meta_batch(model, 1, crop, num_slices, streams))
    with torch.no_grad():
        with FlopCounterMode(display=False) as embed:
            cond = model.condition_embedder(**inputs)
        latents = {k: torch.zeros(1, *s, device="meta") for k, s in model.generator.latent_shapes().items()}
        t = torch.zeros(1, device="meta")
        with FlopCounterMode(display=False) as flow:
            model.generator(latents, t, cond, d=t)
        with FlopCounterMode(display=False) as decode:
            model.decode_shape(latents["shape"])
    grid = time_grid(sampler.steps, sampler.rescale_t).tolist()[:-1]
    lo, hi = sampler.cfg_interval
    passes = sum(2 if sampler.cfg_strength > 0 and lo <= t0 * sampler.time_scale <= hi else 1 for t0 in grid)
    return embed.get_total_flops() + passes * flow.get_total_flops() + decode.get_total_flops(), cond.shape[1]


def measured(pattern: str) -> dict | None:
    found = sorted(REPO.glob(f"benchmarks/gpu/*/{pattern}"))
    return json.loads(found[-1].read_text()) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sam3d")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--tflops", type=float, default=300.0, help="sustained bf16 TFLOP/s assumed for the estimate")
    parser.add_argument("--train_cases", type=int, default=596)
    parser.add_argument("--test_cases", type=int, default=150)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--axes", type=int, default=3, help="slicing axes evaluated per class")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch", default="1,2,4")
    args = parser.parse_args()
    model = build(args.preset, args.rank)
    cfg = model.cfg
    flops = training_flops(model, args.crop)
    memory = estimate_training_memory(model, lambda m: TrainingObjective(m, LossWeights()),
                                      lambda b: meta_batch(model, b, args.crop))
    recon, _ = reconstruction(model, args.crop)
    rate = args.tflops * 1e12
    print(f"preset {args.preset}: Dino input {cfg.image_vit.input_size} px, {cfg.condition_tokens:,d} condition tokens, "
          f"LoRA rank {args.rank}; FLOPs counted on the meta device; sustained rate assumed {args.tflops:g} TFLOP/s")
    print(f"one training sample: {flops / 1e12:.1f} TFLOP -> {rate / flops:.1f} samples/s at that rate")
    print(f"one reconstruction ({cfg.sampler.steps} steps, guidance {cfg.sampler.cfg_strength} in "
          f"{list(cfg.sampler.cfg_interval)}): {recon / 1e12:.1f} TFLOP -> {recon / rate:.2f} s")

    train_bf16 = measured("train_bf16.json")
    rows = {(r["batch"], r["checkpointing"]): r for r in (train_bf16 or {}).get("rows", []) if not r.get("oom")}
    print(f"\n{'batch':>5} {'checkpointing':>13} {'estimated GiB':>13} {'measured GiB':>12} {'measured s/step':>15}"
          f" {'measured samples/s':>18}")
    for batch in (int(b) for b in args.batch.split(",")):
        for ckpt in (False, True):
            estimate = memory.peak(batch, ckpt) / GiB
            m = rows.get((batch, ckpt))
            print(f"{batch:>5} {str(ckpt):>13} {estimate:>13.1f} " + (
                f"{m['peak_gib']:>12.1f} {m['seconds']:>15.3f} {batch / m['seconds']:>18.2f}" if m else f"{'-':>12}"))

    samples_per_epoch = args.train_cases * args.classes
    hours_epoch = samples_per_epoch * flops / rate / 3600
    reconstructions = args.test_cases * args.classes * args.axes
    print(f"\nan epoch = every (case, class) pair once: {args.train_cases} cases x {args.classes} classes = "
          f"{samples_per_epoch:,d} samples")
    print(f"{'':<46}{'estimate':>12}{'measured rate':>16}")
    best = max((batch / r["seconds"] for (batch, ckpt), r in rows.items()), default=None)
    inference = measured("inference.json")
    per_recon = min((r["seconds"] / r["batch"] for r in (inference or {}).get("reconstruction", [])), default=None)
    lines = [("hours per epoch", hours_epoch, samples_per_epoch / best / 3600 if best else None),
             (f"hours for {args.epochs} epochs", hours_epoch * args.epochs,
              args.epochs * samples_per_epoch / best / 3600 if best else None),
             (f"hours to evaluate {args.test_cases} cases ({reconstructions:,d} rec.)", reconstructions * recon / rate / 3600,
              reconstructions * per_recon / 3600 if per_recon else None)]
    checkpointed_4 = rows.get((4, True))
    if checkpointed_4:  # what a 24 GB card runs: batch 4 with checkpointing (the estimate counts FLOPs once)
        lines.append((f"hours for {args.epochs} epochs, 24 GB card", hours_epoch * args.epochs,
                      args.epochs * samples_per_epoch / (4 / checkpointed_4["seconds"]) / 3600))
    for label, estimate, at_measured in lines:
        print(f"{label:<46}{estimate:>12.2f}" + (f"{at_measured:>16.2f}" if at_measured is not None else f"{'-':>16}"))
    if best:
        print(f"(measured rate: {best:.2f} samples/s, the best row above; reconstruction {per_recon:.2f} s each, "
              f"batched; one H100, {train_bf16['device']})")
    budget = 24 * GiB
    print(f"\na 24 GB card (estimate x {SAFETY} safety): batch 4 needs {memory.peak(4, False) * SAFETY / GiB:.1f} GiB "
          f"without checkpointing, {memory.peak(4, True) * SAFETY / GiB:.1f} GiB with it; largest batch: "
          f"{memory.largest_batch(budget, False)} without, {memory.largest_batch(budget, True)} with checkpointing")
    several_slices(model, args.crop, rate)


def several_slices(model, crop: int, rate: float) -> None:
    """Tokens, FLOPs and memory with K = 1, 2, 3 input slices, the further slices with all six condition
    streams or the crop's three (``data.extra_slice_streams``); ratios against K = 1 in the same run."""
    print("\ninput slices (data.num_slices; every sample with K slices), ratios against K = 1")
    print(f"{'K':>2} {'further streams':>15} {'cond. tokens':>12} {'train TFLOP':>11} {'x':>6} {'recon TFLOP':>11} "
          f"{'x':>6} {'GiB b=1':>8} {'GiB b=4 ckpt':>12} {'x':>6}")
    reference = None
    for k, streams in ((1, "all"), (2, "all"), (3, "all"), (2, "crop"), (3, "crop")):
        train = training_flops(model, crop, k, streams)
        recon, tokens = reconstruction(model, crop, k, streams)
        memory = estimate_training_memory(model, lambda m: TrainingObjective(m, LossWeights()),
                                          lambda b: meta_batch(model, b, crop, k, streams))
        gib = (memory.peak(1, False) / GiB, memory.peak(4, True) / GiB)
        reference = reference or (train, recon, gib[1])
        print(f"{k:>2} {streams if k > 1 else '-':>15} {tokens:>12,d} {train / 1e12:>11.2f} {train / reference[0]:>6.2f} "
              f"{recon / 1e12:>11.2f} {recon / reference[1]:>6.2f} {gib[0]:>8.1f} {gib[1]:>12.1f} {gib[1] / reference[2]:>6.2f}")
    print(f"(at {rate / 1e12:g} TFLOP/s: a K = 3 training sample, all streams, takes "
          f"{training_flops(model, crop, 3) / rate:.2f} s)")


if __name__ == "__main__":
    main()
