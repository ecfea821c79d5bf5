#!/usr/bin/env python
"""Several slices in, one shape out: reconstructions from K = 1, 2, 3 orthogonal slices.

One run, the same cases and the same slices for every row (the evaluation runner's protocol: per case,
class and slicing axis the largest-area slice first, then the class's largest section along each other
axis; every input plane = its mask; the pose fitted to all of them). Test sets: held-out ellipsoid
heart phantoms, and the real chambers of ``../shared/anatomy/strocchi2020_case01`` rasterised at 3 mm
with phantom-style HU (``anatomy_set.py``; four classes, no myocardium: nan, never 0).

Rows, for each K: base zero-shot (the rehearsal release given the K slices), LoRA trained on one slice
(``data.num_slices=[1]``, today's), LoRA trained on one to three (``data.num_slices=[1,3]``, K drawn
per sample, orthogonal), the visual hull of the same slices (extrude at K = 1), mean shape. Both LoRA
runs: the demo's recipe (``bench_adaptation.training_config``), the same steps and batch size; the
settings were chosen on development phantoms for one slice and not tuned here.

    python benchmarks/bench_slices.py --work /tmp/bench_slices --json benchmarks/cpu/slices.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anatomy_set import build as build_anatomy_set  # noqa: E402
from bench_adaptation import add_recipe_arguments, training_config  # noqa: E402
from bench_anatomy import METRICS, cell, preprocess, single_case_caches, start_run, summary_of  # noqa: E402

from sam3d_med.data.phantom import write_phantom_dataset  # noqa: E402
from sam3d_med.eval.runner import EvalOptions, evaluate, evaluate_model  # noqa: E402
from sam3d_med.train.trainer import build_model, resolve_device, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["left_atrium", "left_ventricle", "right_atrium", "right_ventricle", "myocardium"]
STROCCHI = "strocchi2020_case01"
TRAININGS = "LoRA, 1 slice=[1];LoRA, 1-3 slices=[1,3]"  # row name=data.num_slices, ";" between


def score(test_set: str, cache: Path, k: int, models: dict, base_model, base_cfg: dict, work: Path,
          options: EvalOptions, device: str) -> list[dict]:
    """The rows of one test set at K slices."""
    opts = EvalOptions(**{**options.__dict__, "num_slices": k})
    tag = f"{test_set}_{k}".replace(" ", "_").replace(",", "")
    rows = []
    document = evaluate_model(base_model, base_cfg, "base (zero-shot)", cache, work / f"eval_{tag}_base", opts, device,
                              weights={"base": "rehearsal"}, log=lambda m: None)
    rows.append({"test": test_set, "k": k, "method": "base zero-shot", **summary_of(document, "model")})
    for name, checkpoint in models.items():
        document = evaluate(checkpoint, cache, work / f"eval_{tag}_{name.replace(' ', '_').replace(',', '')}", opts,
                            device, log=lambda m: None)
        rows.append({"test": test_set, "k": k, "method": name, **summary_of(document, "model")})
    hull = "extrude" if k == 1 else "visual_hull"
    for method, label in ((hull, "visual hull (extrude at K=1)"), ("mean_shape", "mean shape")):
        rows.append({"test": test_set, "k": k, "method": label, **summary_of(document, method)})
    return rows


def print_table(rows: list[dict]) -> None:
    for test_set in dict.fromkeys(r["test"] for r in rows):
        block = [r for r in rows if r["test"] == test_set]
        ks = sorted({r["k"] for r in block})
        methods = list(dict.fromkeys(r["method"] for r in block))
        print(f"\n## {test_set}  ({block[0].get('samples', '?')} reconstructions per row and K)")
        hull = "visual hull (extrude at K=1)"
        for title, key, _ in METRICS:  # and, for Dice, each row's ratio to the visual hull of the same slices
            ratios = key == "dice"
            print(f"{title:<34}" + "".join(f"{'K=' + str(k):>10}" for k in ks)
                  + "".join(f"{'/hull K=' + str(k):>12}" for k in ks if ratios))
            for method in methods:
                values = [next(r for r in block if r["k"] == k and r["method"] == method)["overall"].get(key) for k in ks]
                hulls = [next(r for r in block if r["k"] == k and r["method"] == hull)["overall"].get(key) for k in ks]
                print(f"  {method:<32}" + "".join(f"{cell(v):>10}" for v in values)
                      + "".join(f"{v / h:>12.2f}" for v, h in zip(values, hulls) if ratios))
        present = [c for c in CLASSES if any(c in r for r in block)]  # a class the case lacks: not a column
        for title, key, _ in METRICS:
            for k in ks:
                print(f"{title} per class, K={k}".ljust(34) + "".join(f"{c[:13]:>14}" for c in present))
                for method in methods:
                    r = next(r for r in block if r["k"] == k and r["method"] == method)
                    print(f"  {method:<32}" + "".join(f"{cell((r.get(c) or {}).get(key)):>14}" for c in present))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anatomy_dir", default=os.environ.get("SAM3D_MED_ANATOMY_DIR", str(REPO.parent / "shared" / "anatomy")))
    add_recipe_arguments(parser)
    parser.add_argument("--work", default=None)
    parser.add_argument("--table", default=None, metavar="JSON", help="only print the tables of an earlier run's --json")
    parser.add_argument("--train_cases", type=int, default=24)
    parser.add_argument("--test_cases", type=int, default=4)
    parser.add_argument("--num_slices", default="1,2,3", help="K of the evaluations")
    parser.add_argument("--trainings", default=TRAININGS, help="the LoRA runs: NAME=data.num_slices, ';' between")
    parser.add_argument("overrides", nargs="*", help="more key=value training settings (both LoRA runs)")
    args = parser.parse_args()
    if args.table:
        print_table(json.loads(Path(args.table).read_text())["rows"])
        return
    work, log, started = start_run(parser, args, logging.WARNING)

    anatomy = work / "anatomy_set"
    if not (anatomy / "chambers_phantom_hu" / STROCCHI).is_dir():
        build_anatomy_set(Path(args.anatomy_dir), anatomy)
    raw = work / "train_raw"
    write_phantom_dataset(raw, args.train_cases, seed=args.seed, first_index=1)
    train_cache = preprocess(raw, work / "train")
    raw = work / "test_raw"
    write_phantom_dataset(raw, args.test_cases, seed=args.seed + 99, first_index=101)
    tests = {"ellipsoid phantoms (held out)": preprocess(raw, work / "test")}
    strocchi = single_case_caches(anatomy / "chambers_phantom_hu", work, "real")[STROCCHI]
    tests[f"real {STROCCHI}, phantom HU"] = strocchi
    log("data ready")

    device = str(resolve_device(args.device))
    models, minutes = {}, {}
    for name, num_slices in (part.split("=") for part in args.trainings.split(";")):
        t0 = time.perf_counter()
        folder = work / f"ckpt_{num_slices.strip('[]').replace(',', '-')}"
        args_k = argparse.Namespace(**{**vars(args), "overrides": [*args.overrides, f"data.num_slices={num_slices}"]})
        summary = train(training_config(args_k, "object", train_cache, folder), work / f"run_{folder.name}")
        models[name], minutes[name] = folder / "best.pt", (time.perf_counter() - t0) / 60
        log(f"{name}: {minutes[name]:.1f} min, best validation Dice {summary['best_dice']:.3f}")
    base_cfg = training_config(args, "object", train_cache, work / "base_unused")
    base_model, _ = build_model(base_cfg)
    base_model = base_model.to(device).eval()
    base_cfg = OmegaConf.to_container(base_cfg, resolve=True)
    options = EvalOptions(steps=args.sampler_steps, samples=args.eval_samples, batch_size=8, seed=args.seed)

    rows = []
    for test_set, cache in tests.items():
        for k in (int(k) for k in args.num_slices.split(",")):
            rows += score(test_set, cache, k, models, base_model, base_cfg, work, options, device)
            log(f"scored: {test_set}, K={k}")
            if args.json:  # as it goes: a run stopped at a time limit keeps what it scored
                Path(args.json).write_text(json.dumps({"args": vars(args), "minutes": minutes, "rows": rows,
                                                       "partial": True}, indent=1, default=str))
    print(f"\n# bench_slices: base {args.base}, device {device}; {args.train_cases} training phantoms; both LoRA runs "
          f"rank {args.lora_rank}, {args.epochs * args.steps} steps of {args.batch} "
          f"({', '.join(f'{n} {m:.1f} min' for n, m in minutes.items())}); evaluation {args.eval_samples} draws x "
          f"{args.sampler_steps} steps; orthogonal slices; total {(time.perf_counter() - started) / 60:.1f} min")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "minutes": minutes, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
