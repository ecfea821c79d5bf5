#!/usr/bin/env python
"""Sampling a reconstruction, and decoder inversion (the flow targets without a released encoder):
time and peak memory at the preset's sizes, random weights.

- reconstruction: ``model.reconstruct`` (condition embedder, Euler sampler with the model's steps and
  classifier-free guidance, decoder) for each batch size in --batch; median of --repeats;
  seconds per reconstruction and its ratio against the first row;
- inversion: one step of ``train.latent_targets.invert_decoder`` (decoder forward + backward to the
  latent, Adam) on --inversion_batch volumes; median seconds per step and per volume-step;
- with --precision: the flow transformer's velocity under fp16 and bf16 autocast against float32,
  ||v - v_fp32|| / ||v_fp32|| (random weights with the zero-initialised adaLN layers perturbed, so
  that the blocks are not the identity).

    python benchmarks/bench_inference.py                                        # tiny on CPU
    python benchmarks/bench_inference.py --preset sam3d --device cuda --batch 1,8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from _timing import timed_steps

from sam3d_med.model.config import get_preset
from sam3d_med.model.sam3d import SparseStructureModel
from sam3d_med.train.latent_targets import InversionSettings, invert_decoder
from sam3d_med.train.losses import CONDITION_KEYS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", default="1,2")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the preset's)")
    parser.add_argument("--crop", type=int, default=None, help="input crop size (default: 256 for sam3d, 64 tiny)")
    parser.add_argument("--inversion_batch", type=int, default=8)
    parser.add_argument("--inversion_steps", type=int, default=5, help="timed inversion steps (after 2 warm-up)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", action="store_true", help="velocity error of fp16/bf16 against float32")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):
        model = SparseStructureModel(get_preset(args.preset), with_encoder=False).eval()
    built = time.perf_counter() - started
    cfg = model.cfg
    sampler = cfg.sampler if args.steps is None else dataclasses.replace(cfg.sampler, steps=args.steps)
    crop = args.crop or (256 if args.preset == "sam3d" else 64)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"preset {args.preset} ({cfg.condition_tokens:,d} condition tokens), {name}, torch {torch.__version__}; "
          f"model built in {built:.1f} s; sampler {sampler.steps} steps, guidance {sampler.cfg_strength} for model "
          f"time in {list(sampler.cfg_interval)}; median of {args.repeats} after one warm-up")
    result = {"device": name, "torch": torch.__version__, "preset": args.preset, "sampler_steps": sampler.steps,
              "reconstruction": [], "inversion": None}
    print(f"{'batch':>5} {'s/batch':>8} {'s/reconstruction':>16} {'vs first':>8} {'peak GiB':>8}")
    reference = None
    g = torch.Generator().manual_seed(0)
    for batch in (int(b) for b in args.batch.split(",")):
        inputs = {k: torch.rand(batch, 1 if "mask" in k else 3, crop, crop, generator=g).to(device) for k in CONDITION_KEYS}
        seconds, peak = timed_steps(lambda: model.reconstruct(inputs, seed=0, sampler=sampler), device, 1, args.repeats)
        per = seconds / batch
        reference = reference or per
        result["reconstruction"].append({"batch": batch, "seconds": seconds, "peak_gib": peak})
        print(f"{batch:>5} {seconds:>8.2f} {per:>16.3f} {reference / per:>8.2f} {peak:>8.2f}", flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)

    side = cfg.occupancy_resolution
    grid = torch.stack(torch.meshgrid(*[torch.arange(side, dtype=torch.float32)] * 3, indexing="ij"))
    occupancy = ((grid - side / 2).norm(dim=0) < side / 6).float().expand(args.inversion_batch, 1, side, side, side).to(device)
    latent_shape = (cfg.flow.latent_channels,) + (cfg.flow.resolution,) * 3

    def inversion(steps):
        return lambda: invert_decoder(model.decoder, occupancy, InversionSettings(steps=steps, target_dice=2.0), latent_shape)

    one, _ = timed_steps(inversion(2), device, 1, 1)
    many, peak = timed_steps(inversion(2 + args.inversion_steps), device, 0, 1)
    per_step = (many - one) / args.inversion_steps
    result["inversion"] = {"batch": args.inversion_batch, "seconds_per_step": per_step, "peak_gib": peak}
    print(f"decoder inversion, batch {args.inversion_batch}: {per_step:.3f} s per step "
          f"({per_step / args.inversion_batch * 1000:.1f} ms per volume-step), peak {peak:.2f} GiB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    if args.precision:
        result["velocity_relative_error"] = velocity_precision(model, crop, device)
        print("flow velocity vs float32, ||v - v32|| / ||v32||: " + ", ".join(
            f"{k} {v:.2e}" for k, v in result["velocity_relative_error"].items()))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)


@torch.no_grad()
def velocity_precision(model, crop, device) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    for block in model.generator.blocks:  # adaLN-zero: give the blocks something to do
        block.adaLN_modulation[-1].weight.normal_(0, 0.02, generator=None)
    inputs = {k: torch.rand(1, 1 if "mask" in k else 3, crop, crop, generator=g).to(device) for k in CONDITION_KEYS}
    cond = model.condition_embedder(**inputs)
    latents = {k: torch.randn(1, *s, generator=g).to(device) for k, s in model.generator.latent_shapes().items()}
    t, d = torch.full((1,), 300.0, device=device), torch.zeros(1, device=device)
    reference = model.generator(latents, t, cond, d=d)
    errors = {}
    for label, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        with torch.autocast(device.type, dtype=dtype):
            out = model.generator(latents, t, cond, d=d)
        errors[label] = float(sum((out[k].float() - reference[k]).norm() ** 2 for k in reference).sqrt()
                              / sum(reference[k].norm() ** 2 for k in reference).sqrt())
    return errors


if __name__ == "__main__":
    main()
