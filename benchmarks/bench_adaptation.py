#!/usr/bin/env python
"""Does fine-tuning learn the task? Base zero-shot vs LoRA (object frame) vs LoRA (volume frame) vs the
two baselines, on the same held-out cases and the same conditioning slices, in one run.

Each model row is evaluated by the evaluation runner (``eval_medical.py``'s protocol: per case, class
and slicing axis the largest-area slice, the input plane set to the input mask); the baselines
(``mean_shape``, ``extrude``) come from the same samples. Prints one table: Dice (mean), HD95 (mean and
median, mm), Surface Dice at 1 and 3 mm (mean), and the minutes each row took; then Dice per class.
Every model row is scored as ``eval_medical.py`` scores by default: the pose fitted to the input slice
and ``--eval_samples`` draws of ``--sampler_steps`` steps averaged per input.

Default: the rehearsal release (``release/rehearsal/checkpoints``), synthetic heart phantoms
(``--train_cases`` for fine-tuning, ``--test_cases`` new ones for the table) and the demo's fine-tuning
recipe (``configs/experiment/demo_cpu.yaml``) at a larger scale: 36 phantoms, 10 x 120 steps of 8
(checked on development phantoms, seed 7, before any run on these test cases). About an hour on 2 CPU
cores, minutes on a GPU (``--device cuda data.num_workers=12``). With Meta's weights and real data on
a GPU:

    python benchmarks/bench_adaptation.py --base checkpoints/hf --train_cache dataset/ts_processed \\
        --test_cache dataset/ts_processed_test --device cuda --experiment '' --epochs 5 --steps 500 \\
        --batch 4 --crop 256 --inversion_steps 150 --sampler_steps 25 --eval_samples 1

``--target_sources encoder,inversion`` trains a LoRA row with each source of flow targets
(``latent_targets.source``: the released encoder's means, or decoder inversion) on the same data.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess
from sam3d_med.eval.runner import EvalOptions, evaluate, evaluate_model
from sam3d_med.runtime import keep_freed_memory_for_reuse
from sam3d_med.train.trainer import build_model, resolve_device, train

REPO = Path(__file__).resolve().parents[1]
TABLE_HEADER = (f"{'method':<22}{'Dice':>8}{'HD95 mean':>11}{'median':>8}{'NSD@1mm':>9}{'NSD@3mm':>9}{'vs extrude':>12}"
                f"{'minutes':>9}")


def phantom_cache(root: Path, name: str, cases: int, seed: int, first_index: int) -> Path:
    raw, cache = root / f"{name}_raw", root / name
    write_phantom_dataset(raw, cases, seed=seed, first_index=first_index)
    summary = run_preprocess(raw, cache, PreprocessOptions(), workers=1, progress=False, log=lambda m: None)
    assert summary.ok, summary.failed
    return cache


def training_config(args, frame: str, train_cache: Path, checkpoint_dir: Path, source: str = "auto"):
    overrides = [f"experiment={args.experiment}"] if args.experiment else []
    overrides.append(f"latent_targets.source={source}")
    overrides += [f"model.checkpoint_dir={Path(args.base).resolve()}", f"data.slice_cache_dir={train_cache}",
                 f"data.target_frame={frame}", f"data.preprocess_crop_size=[{args.crop},{args.crop}]",
                 f"training.epochs={args.epochs}", f"training.max_steps_per_epoch={args.steps}",
                 f"training.batch_size={args.batch}", f"training.checkpoint_dir={checkpoint_dir}",
                 f"training.learning_rate={args.lr}", f"training.warmup_steps={args.warmup}",
                 f"lora.rank={args.lora_rank}", f"lora.alpha={2 * args.lora_rank}", f"lora.include_mlp={args.lora_mlp}",
                 f"device={args.device}", "data.num_workers=0", f"seed={args.seed}",
                 f"latent_targets.steps={args.inversion_steps}", f"data.epoch={args.epoch_mode}",
                 "validation.reconstructions=15",
                 # validation and the inversion's start sample with the evaluation's steps
                 f"validation.sampler_steps={args.sampler_steps}", f"latent_targets.init_steps={args.sampler_steps}",
                 *args.overrides]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(config_name="train", overrides=overrides)


def add_recipe_arguments(parser: argparse.ArgumentParser, epochs: int = 6, steps: int = 60) -> None:
    """The fine-tuning recipe's options that ``training_config`` reads (the demo's recipe by default;
    its 6 sampler steps x 6 draws were chosen on development phantoms, seed 7, never on test cases)."""
    parser.add_argument("--base", default=str(REPO / "release" / "rehearsal" / "checkpoints"),
                        help="folder of the base release (Meta's checkpoints/hf, or the rehearsal release)")
    parser.add_argument("--experiment", default="demo_cpu",
                        help="the fine-tuning recipe (configs/experiment) the options below override; '' for none")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps per epoch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--lora_mlp", default="true", choices=["true", "false"])
    parser.add_argument("--inversion_steps", type=int, default=30)
    parser.add_argument("--epoch_mode", default="slices", choices=["slices", "pairs"], help="data.epoch")
    parser.add_argument("--sampler_steps", type=int, default=6,
                        help="sampler steps in evaluation, validation and the inversion's start sample")
    parser.add_argument("--eval_samples", type=int, default=6, help="draws averaged per input in evaluation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the table as JSON")


def row(document: dict, method: str, minutes: float) -> dict:
    overall = document["summary"][method]["overall"]
    per_class = document["summary"][method]["per_class"]
    return {"method": method, "dice": overall["dice"]["mean"], "hd95_mm": overall["hd95_mm"]["median"],
            "hd95_mean_mm": overall["hd95_mm"]["mean"], "nsd_1mm": overall["nsd_1mm"]["mean"],
            "nsd_3mm": overall["nsd_3mm"]["mean"], "minutes": minutes, "samples": overall["dice"]["count"],
            "dice_per_class": {name: metrics["dice"]["mean"] for name, metrics in per_class.items()}}


def print_row(r: dict, reference_dice: float) -> None:
    print(f"{r['method']:<22}{r['dice']:>8.3f}{r['hd95_mean_mm']:>11.1f}{r['hd95_mm']:>8.1f}{r['nsd_1mm']:>9.3f}"
          f"{r['nsd_3mm']:>9.3f}{r['dice'] / reference_dice:>12.2f}{r['minutes']:>9.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_arguments(parser, epochs=10, steps=120)
    parser.add_argument("--train_cache", default=None, help="preprocessed training cache (default: phantoms)")
    parser.add_argument("--test_cache", default=None, help="preprocessed held-out cache (default: new phantoms)")
    parser.add_argument("--train_cases", type=int, default=36)
    parser.add_argument("--test_cases", type=int, default=4)
    parser.add_argument("--data_seed", type=int, default=0, help="phantom seed (test cases use seed + 99)")
    parser.add_argument("--guidance", type=float, default=None, help="evaluation guidance (default: model's)")
    parser.add_argument("--frames", default="object,volume", help="LoRA rows, in this order")
    parser.add_argument("--target_sources", default="auto",
                        help="latent_targets.source of the LoRA rows (auto, encoder, inversion; several: a row each)")
    parser.add_argument("--work", default=None, help="folder for caches, checkpoints and results (default: temporary)")
    parser.add_argument("overrides", nargs="*", help="more key=value training settings, for both frames")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # the trainer's epoch lines
    keep_freed_memory_for_reuse()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_adaptation_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_cache = Path(args.train_cache) if args.train_cache else phantom_cache(work, "train_cache", args.train_cases,
                                                                               args.data_seed, 1)
    test_cache = Path(args.test_cache) if args.test_cache else phantom_cache(work, "test_cache", args.test_cases,
                                                                            args.data_seed + 99, 101)
    options = EvalOptions(steps=args.sampler_steps, guidance=args.guidance, samples=args.eval_samples, batch_size=8,
                          seed=args.seed)
    device = str(resolve_device(args.device))
    print(f"data ready in {(time.perf_counter() - started) / 60:.1f} min: train {train_cache}, test {test_cache}",
          flush=True)
    print(TABLE_HEADER, flush=True)

    # the base as released, no fine-tuning (object frame: the frame it was built for); the baselines
    # are scored on the same samples in the same document
    t0 = time.perf_counter()
    cfg = training_config(args, "object", train_cache, work / "base_unused")
    model, identity = build_model(cfg)
    document = evaluate_model(model.to(device).eval(), OmegaConf.to_container(cfg, resolve=True),
                              f"base {args.base} (zero-shot)", test_cache, work / "eval_base", options, device,
                              weights={"base": identity})
    rows = [row(document, method, 0.0) for method in ("mean_shape", "extrude")]
    rows.append({**row(document, "model", (time.perf_counter() - t0) / 60), "method": "base zero-shot"})
    reference = rows[1]["dice"]
    for r in rows:
        print_row(r, reference)
    sources = args.target_sources.split(",")
    for frame in args.frames.split(","):  # each row printed when done: a run cut short keeps the rows before
        for source in sources:
            t0 = time.perf_counter()
            name = f"{frame}_{source}"
            cfg = training_config(args, frame, train_cache, work / f"ckpt_{name}", source)
            summary = train(cfg, work / f"run_{name}")
            document = evaluate(work / f"ckpt_{name}" / "best.pt", test_cache, work / f"eval_{name}", options, device)
            label = f"LoRA ({frame}" + (f", {source[:3]}" if len(sources) > 1 else "") + ")"
            rows.append({**row(document, "model", (time.perf_counter() - t0) / 60), "method": label,
                         "best_val_dice": summary["best_dice"], "target_source": source})
            print_row(rows[-1], reference)

    print(f"\nadaptation on {test_cache} (held out), base {args.base}, device {device}; LoRA rank {args.lora_rank} "
          f"(MLPs: {args.lora_mlp}), {args.epochs} x {args.steps} steps of {args.batch}; same cases and slices for "
          f"every row; input plane = input mask, pose fitted to it, {args.eval_samples} draws x "
          f"{args.sampler_steps} steps averaged; {rows[0]['samples']} samples")
    print(TABLE_HEADER)
    for r in rows:
        print_row(r, reference)
    names = list(rows[0]["dice_per_class"])
    print(f"\nDice per class\n{'method':<22}" + "".join(f"{name[:15]:>16}" for name in names))
    for r in rows:
        print(f"{r['method']:<22}" + "".join(f"{r['dice_per_class'][name]:>16.3f}" for name in names))
    print(f"total {(time.perf_counter() - started) / 60:.1f} min; results in {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=float))



if __name__ == "__main__":
    main()
