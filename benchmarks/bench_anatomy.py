#!/usr/bin/env python
"""Real anatomy, and a supervised 3-D network on the same inputs: does the pretrained prior pay for itself?

One run, the same cases and the same conditioning slices for every row (the evaluation runner's
protocol: per case, class and slicing axis the largest-area slice, input plane = input mask, pose
fitted to it). Test sets:

- ``ellipsoid``: held-out ellipsoid heart phantoms (``sam3d-med phantom``);
- ``anatomy phantoms``: held-out anatomy-based phantoms (``sam3d-med phantom --template``) of each
  real template, scored by the models trained on phantoms of that template (new deformations and
  poses) and by the ellipsoid-trained ones;
- the real-anatomy set (``anatomy_set.py``, from ``../shared/anatomy``): the Strocchi et al. 2020
  chambers and the biv-me ventricles, each with phantom-style and with real-CT-like intensities; the
  real CTA's whole heart (TotalSegmentator test data; its pulmonary artery, which is no training
  class, left out), scored as the union of the training classes (``--class_union heart=1,2,3,4,5``:
  the baselines from the chambers' union, the U-Net with all five class inputs on: a query it was not
  trained for, as the whole heart is for the LoRA model).

Rows: base zero-shot, LoRA (object frame), the 3-D U-Net (``sam3d-med train-unet``: MONAI UNet, the
same training cases, the same optimiser steps and batch size as the LoRA run), extrude, mean shape.
Two training sets: ellipsoid phantoms, and anatomy-based phantoms of the templates OTHER than the
case scored (never a case's own anatomy in its training set: with the two chamber templates, the
Strocchi case is scored by models trained on biv-me phantoms and the reverse).

Settings were chosen on development phantoms (the demo's recipe; ``bench_adaptation.py``), never on
these cases: the real-anatomy rows are reported once.

    python benchmarks/bench_anatomy.py --work /tmp/bench_anatomy --json benchmarks/cpu/anatomy.json
"""

from __future__ import annotations

import argparse
import os
import json
import logging
import math
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anatomy_set import build as build_anatomy_set  # noqa: E402
from bench_adaptation import add_recipe_arguments, training_config  # noqa: E402

from sam3d_med.data.phantom import write_phantom_dataset  # noqa: E402
from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess  # noqa: E402
from sam3d_med.data.template_phantom import write_template_phantom_dataset  # noqa: E402
from sam3d_med.eval.runner import EvalOptions, evaluate, evaluate_model  # noqa: E402
from sam3d_med.runtime import keep_freed_memory_for_reuse  # noqa: E402
from sam3d_med.train.trainer import build_model, resolve_device, train  # noqa: E402
from sam3d_med.train.unet_baseline import train_unet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ("strocchi2020_case01", "bivme_patient1")
WHOLE_HEART = {"heart": (1, 2, 3, 4, 5)}
CLASSES = ["left_atrium", "left_ventricle", "right_atrium", "right_ventricle", "myocardium", "heart"]
METRICS = (("Dice", "dice", "mean"), ("HD95 mm (median)", "hd95_mm", "median"), ("NSD@3mm", "nsd_3mm", "mean"))


def preprocess(raw: Path, cache: Path, class_names: dict | None = None) -> Path:
    options = PreprocessOptions(class_names=class_names) if class_names else PreprocessOptions()
    if class_names:
        options.classes = len(class_names)
    summary = run_preprocess(raw, cache, options, workers=1, progress=False, log=lambda m: None)
    assert summary.ok, summary.failed
    return cache


def single_case_caches(folder: Path, work: Path, prefix: str, class_names: dict | None = None) -> dict[str, Path]:
    """One cache per case of a data folder (so that each case is scored by the models allowed to see it)."""
    caches = {}
    for case in sorted(p for p in folder.iterdir() if p.is_dir()):
        raw = work / f"{prefix}_{case.name}_raw"
        (raw / case.name).mkdir(parents=True, exist_ok=True)
        for f in case.iterdir():
            target = raw / case.name / f.name
            if not target.exists():
                target.symlink_to(f.resolve())
        if (folder / "classes.json").is_file() and not (raw / "classes.json").exists():
            (raw / "classes.json").symlink_to((folder / "classes.json").resolve())
        caches[case.name] = preprocess(raw, work / f"{prefix}_{case.name}", class_names)
    return caches


def heart_only(folder: Path, out: Path) -> Path:
    """The real CT's case with its heart only (label 1; the pulmonary artery, which no training class
    is, set to background): the image as it is."""
    import numpy as np

    from sam3d_med.io.nifti import load_volume, save_volume

    case = "ts_pulmonary_ct"
    (out / case).mkdir(parents=True, exist_ok=True)
    label = load_volume(folder / case / f"{case}-label.nii.gz", canonical=False)
    save_volume(out / case / f"{case}-label.nii.gz", (label.data == 1).astype(np.uint8), label.affine, like=label)
    image = out / case / f"{case}-image.nii.gz"
    if not image.exists():
        image.symlink_to((folder / case / f"{case}-image.nii.gz").resolve())
    return out


def train_pair(args, name: str, train_cache: Path, work: Path, log) -> dict:
    """LoRA (object frame) and the U-Net on one training cache, the same steps and batch size."""
    t0 = time.perf_counter()
    cfg = training_config(args, "object", train_cache, work / f"ckpt_{name}")
    summary = train(cfg, work / f"run_{name}")
    lora_minutes = (time.perf_counter() - t0) / 60
    t0 = time.perf_counter()
    steps = args.epochs * args.steps
    unet_path = work / f"unet_{name}.pt"
    if not unet_path.is_file():
        train_unet(train_cache, unet_path, steps=steps, batch_size=args.batch, lr=args.unet_lr, seed=args.seed,
                   val_fraction=float(cfg.data.val_fraction), device=args.device, progress=False, log=log)
    unet_minutes = (time.perf_counter() - t0) / 60
    log(f"{name}: LoRA {lora_minutes:.1f} min (best validation Dice {summary['best_dice']:.3f}), U-Net {unet_minutes:.1f} min")
    return {"lora": work / f"ckpt_{name}" / "best.pt", "unet": unet_path, "lora_minutes": lora_minutes,
            "unet_minutes": unet_minutes, "train_cache": train_cache}


def summary_of(document: dict, method: str) -> dict:
    summary = document["summary"][method]
    out = {"overall": {key: summary["overall"][key][stat] for _, key, stat in METRICS}}
    for name, metrics in summary["per_class"].items():
        out[name] = {key: metrics[key][stat] for _, key, stat in METRICS}
    out["samples"] = summary["overall"]["dice"]["count"]
    return out


def score(test_set: str, cache: Path, models: dict, base_model, base_cfg: dict, args, work: Path,
          options: EvalOptions, device: str) -> list[dict]:
    """Rows of one test set: base, then per training set LoRA + U-Net (+ extrude and mean shape of the
    first training set: the baselines' priors come from its training cases)."""
    rows = []
    tag = f"{test_set}".replace(" ", "_").replace("/", "_")
    document = evaluate_model(base_model, base_cfg, f"base {args.base} (zero-shot)", cache, work / f"eval_{tag}_base",
                              options, device, weights={"base": "rehearsal"}, log=lambda m: None)
    rows.append({"test": test_set, "method": "base zero-shot", **summary_of(document, "model")})
    for train_name, pair in models.items():
        opts = EvalOptions(**{**options.__dict__, "unet_checkpoint": str(pair["unet"])})
        document = evaluate(pair["lora"], cache, work / f"eval_{tag}_{train_name}", opts, device, log=lambda m: None)
        rows.append({"test": test_set, "method": f"LoRA ({train_name})", **summary_of(document, "model")})
        rows.append({"test": test_set, "method": f"U-Net ({train_name})", **summary_of(document, "unet")})
        if train_name == next(iter(models)):
            for method in ("extrude", "mean_shape"):
                rows.append({"test": test_set, "method": f"{method} ({train_name})", **summary_of(document, method)})
    return rows


def cell(value: float | None) -> str:
    return f"{'nan' if value is None or (isinstance(value, float) and math.isnan(value)) else f'{value:.3f}' if value <= 1.0 else f'{value:.1f}'}"


def print_table(rows: list[dict], classes: list[str]) -> None:
    for test_set in dict.fromkeys(r["test"] for r in rows):
        block = [r for r in rows if r["test"] == test_set]
        # every tutorial class is a column, so a class the case lacks shows as nan (never 0)
        present = [c for c in classes if any(c in r for r in block)] if "heart" in block[0] else classes[:5]
        print(f"\n## {test_set}  ({block[0].get('samples', '?')} samples per row)")
        for title, key, _ in METRICS:
            print(f"{title:<38}" + "".join(f"{c[:13]:>14}" for c in present) + f"{'all':>10}")
            for r in block:
                values = [(r.get(c) or {}).get(key, float("nan")) for c in present]
                overall = r["overall"].get(key, float("nan"))
                print(f"  {r['method']:<36}" + "".join(f"{cell(v):>14}" for v in values) + f"{cell(overall):>10}")


def start_run(parser: argparse.ArgumentParser, args, level: int = logging.INFO):
    """(work folder (``--work``, required; made), a logger of the minutes since the start, the start)."""
    if not args.work:
        parser.error("--work is required")
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    keep_freed_memory_for_reuse()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {message}", flush=True)

    return work, log, started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anatomy_dir", default=os.environ.get("SAM3D_MED_ANATOMY_DIR", str(REPO.parent / "shared" / "anatomy")),
                        help="../shared/anatomy beside the checkout, or SAM3D_MED_ANATOMY_DIR")
    add_recipe_arguments(parser)
    parser.add_argument("--work", default=None, help="folder for data, caches, checkpoints and evaluations")
    parser.add_argument("--table", default=None, metavar="JSON", help="only print the tables of an earlier run's --json")
    parser.add_argument("--train_cases", type=int, default=24, help="cases per training set")
    parser.add_argument("--test_cases", type=int, default=4, help="held-out ellipsoid phantoms")
    parser.add_argument("--template_test_cases", type=int, default=2, help="held-out anatomy phantoms per template")
    parser.add_argument("--deformation_mm", type=float, default=4.0)
    parser.add_argument("--smoothness_mm", type=float, default=20.0)
    parser.add_argument("--unet_lr", type=float, default=1e-3)
    parser.add_argument("overrides", nargs="*", help="more key=value training settings (LoRA)")
    args = parser.parse_args()
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print_table(saved["rows"], CLASSES)
        return
    work, log, started = start_run(parser, args)

    # --- data
    anatomy = work / "anatomy_set"
    if not (anatomy / "real_ct").is_dir():
        build_anatomy_set(Path(args.anatomy_dir), anatomy)
    templates = {t: anatomy / "templates" / f"{t}-label.nii.gz" for t in TEMPLATES}
    caches = {}
    raw = work / "ellipsoid_train_raw"
    write_phantom_dataset(raw, args.train_cases, seed=args.seed, first_index=1)
    caches["ellipsoid"] = preprocess(raw, work / "ellipsoid_train")
    raw = work / "ellipsoid_test_raw"
    write_phantom_dataset(raw, args.test_cases, seed=args.seed + 99, first_index=101)
    test_ellipsoid = preprocess(raw, work / "ellipsoid_test")
    template_tests = {}
    for n, (name, path) in enumerate(templates.items()):
        raw = work / f"anatomy_{name}_train_raw"
        write_template_phantom_dataset(raw, [path], args.train_cases, seed=args.seed + 10 + n,
                                       amplitude_mm=args.deformation_mm, smoothness_mm=args.smoothness_mm)
        caches[f"{name} phantoms"] = preprocess(raw, work / f"anatomy_{name}_train")
        raw = work / f"anatomy_{name}_test_raw"
        write_template_phantom_dataset(raw, [path], args.template_test_cases, seed=args.seed + 199 + n,
                                       amplitude_mm=args.deformation_mm, smoothness_mm=args.smoothness_mm,
                                       first_index=501)
        template_tests[name] = preprocess(raw, work / f"anatomy_{name}_test")
    real = {style: single_case_caches(anatomy / f"chambers_{style}_hu", work, f"real_{style}")
            for style in ("phantom", "ct")}
    real_ct = preprocess(heart_only(anatomy / "real_ct", work / "real_ct_heart_raw"), work / "real_ct_heart", {1: "heart"})
    log(f"data ready: training sets {', '.join(caches)}")

    # --- models
    device = str(resolve_device(args.device))
    models = {name: train_pair(args, name.split()[0], cache, work, log) for name, cache in caches.items()}
    base_cfg = training_config(args, "object", caches["ellipsoid"], work / "base_unused")
    base_model, _ = build_model(base_cfg)
    base_model = base_model.to(device).eval()
    base_cfg = OmegaConf.to_container(base_cfg, resolve=True)
    options = EvalOptions(steps=args.sampler_steps, samples=args.eval_samples, batch_size=8, seed=args.seed)

    # --- scores; the real CT's heart only (its pulmonary artery has no training class)
    rows = []
    other = {"strocchi2020_case01": "bivme_patient1 phantoms", "bivme_patient1": "strocchi2020_case01 phantoms"}
    rows += score("ellipsoid phantoms (held out)", test_ellipsoid, {"ellipsoid": models["ellipsoid"]}, base_model,
                  base_cfg, args, work, options, device)
    log("scored: ellipsoid phantoms")
    for name, cache in template_tests.items():
        own = f"{name} phantoms"
        rows += score(f"{name} phantoms (held out)", cache, {"ellipsoid": models["ellipsoid"], own: models[own]},
                      base_model, base_cfg, args, work, options, device)
    log("scored: anatomy phantoms")
    for style, by_case in real.items():
        for case_id, cache in by_case.items():
            rows += score(f"real {case_id}, {style} HU", cache,
                          {"ellipsoid": models["ellipsoid"], other[case_id]: models[other[case_id]]},
                          base_model, base_cfg, args, work, options, device)
    log("scored: real chambers")
    ct_options = EvalOptions(**{**options.__dict__, "class_unions": WHOLE_HEART})
    rows += score("real CTA, whole heart", real_ct, {n: models[n] for n in ("ellipsoid",)}, base_model, base_cfg,
                  args, work, ct_options, device)
    log("scored: real CT")

    print(f"\n# bench_anatomy: base {args.base}, device {device}; {args.train_cases} training cases per set, LoRA rank "
          f"{args.lora_rank} and U-Net both {args.epochs * args.steps} steps of {args.batch}; evaluation {args.eval_samples} "
          f"draws x {args.sampler_steps} steps; total {(time.perf_counter() - started) / 60:.1f} min")
    for name, pair in models.items():
        print(f"training set {name}: LoRA {pair['lora_minutes']:.1f} min, U-Net {pair['unet_minutes']:.1f} min")
    print_table(rows, CLASSES)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
