#!/usr/bin/env python
"""Training throughput: samples/s of full training steps (data loading, loss, backward, optimizer).

Runs the real trainer step (``TrainingObjective`` on batches from a phantom cache) for each
configuration and prints the median over --repeats timed steps after --warmup, samples/s, the ratio
against the first row, and peak GPU memory on CUDA.

    python benchmarks/bench_train.py                                   # tiny preset on CPU (demo settings)
    python benchmarks/bench_train.py --preset sam3d --device cuda --batch 4 --lora  # GPU, random weights, bf16
    python benchmarks/bench_train.py --compare_allocator   # CPU: glibc's default vs keeping freed memory

``--compare_allocator`` runs the measurement twice, each in its own process: first with glibc's
defaults (``SAM3D_MED_GLIBC_DEFAULTS=1``), then as the trainer runs on a CPU
(``runtime.keep_freed_memory_for_reuse``), and prints both tables with the processes' user and
system CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _timing import timed_steps
from torch.utils.data import DataLoader

from sam3d_med.data.dataset import SliceClassDataset, load_manifest
from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess
from sam3d_med.model.lora import LoraSettings, apply_lora, trainable_parameters
from sam3d_med.model.sam3d import SparseStructureModel
from sam3d_med.runtime import keep_freed_memory_for_reuse
from sam3d_med.train.losses import LossWeights, TrainingObjective


def measure(model, weights, loader, device, warmup, repeats):
    objective = TrainingObjective(model, weights).to(device)
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-4)
    batches = iter(loader)

    def step():
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(batches).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = objective(batch)["total"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed_steps(step, device, warmup, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", default="8")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lora", action="store_true", help="LoRA (rank 8) instead of training every weight")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--compare_allocator", action="store_true", help="glibc defaults vs the trainer's setting")
    args = parser.parse_args()
    if args.compare_allocator:
        child = [sys.executable, __file__] + [a for a in sys.argv[1:] if a != "--compare_allocator"]
        for label, extra in (("glibc defaults", {"SAM3D_MED_GLIBC_DEFAULTS": "1"}), ("freed memory kept for reuse", {})):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run(child, env={**os.environ, **extra}, capture_output=True, text=True, check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            print(f"== {label}: {after.ru_utime - before.ru_utime:.1f} s user, {after.ru_stime - before.ru_stime:.1f} s "
                  f"system CPU in the process\n{done.stdout.rstrip()}")
        return
    tuned = keep_freed_memory_for_reuse()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        write_phantom_dataset(Path(tmp) / "raw", 3, seed=0)
        run_preprocess(Path(tmp) / "raw", Path(tmp) / "cache", PreprocessOptions(axes=(2,)), progress=False, log=lambda m: None)
        manifest = load_manifest(Path(tmp) / "cache")
        dataset = SliceClassDataset(Path(tmp) / "cache", manifest, [c["case_id"] for c in manifest["cases"]],
                                    (args.crop, args.crop))
        print(f"training step, preset {args.preset}, {'LoRA rank 8' if args.lora else 'all weights'}, crop {args.crop}, "
              f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'}; "
              f"median of {args.repeats} steps after {args.warmup}; glibc {'keeps freed memory' if tuned else 'defaults'}")
        print(f"{'batch':>5} {'3-D terms on':>14} {'s/step':>8} {'samples/s':>9} {'vs first':>8} {'peak GiB':>8}")
        reference = None
        for batch_size in (int(b) for b in args.batch.split(",")):
            for decode in (2, 0):
                torch.manual_seed(0)
                model = SparseStructureModel.from_preset(args.preset, device=device)
                if args.lora:
                    apply_lora(model, LoraSettings(rank=8))
                weights = LossWeights(w_vae_loss=0.0 if args.lora else 1.0, decode_samples=decode)
                loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                                    generator=torch.Generator().manual_seed(0))
                seconds, peak = measure(model, weights, loader, device, args.warmup, args.repeats)
                rate = batch_size / seconds
                reference = reference or rate
                label = f"{decode} samples" if decode else "all samples"
                print(f"{batch_size:>5} {label:>14} {seconds:>8.3f} {rate:>9.2f} {rate / reference:>8.2f} {peak:>8.2f}")


if __name__ == "__main__":
    main()
