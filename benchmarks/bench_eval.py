#!/usr/bin/env python
"""Evaluation speed: cases/s of the evaluation runner (tiny preset, CPU) without and with the per-case
figures (--save_viz), the HTML report's build time, and the metric computation per structure against
MONAI's (Dice + HD95 + NSD at three tolerances on 64^3 masks, 3 mm).

    python benchmarks/bench_eval.py [--cases 4] [--repeats 5] [--eval_repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess
from sam3d_med.eval.metrics import segmentation_metrics
from sam3d_med.eval.runner import EvalOptions, evaluate
from sam3d_med.viz.comparison import write_evaluation_case_visuals
from sam3d_med.viz.report import write_report


def monai_metrics(pred, truth, spacing):
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    def one_hot(m):
        return torch.from_numpy(np.stack([~m, m]))[None].float()

    p, t = one_hot(pred), one_hot(truth)
    compute_dice(p, t, include_background=False)
    compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=list(spacing))
    for tol in (1.0, 3.0, 6.0):
        compute_surface_dice(p, t, class_thresholds=[tol], include_background=False, spacing=list(spacing))


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval_repeats", type=int, default=3, help="runs of the evaluation and the report")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_phantom_dataset(tmp / "train_raw", 3, seed=0)
        write_phantom_dataset(tmp / "test_raw", args.cases, seed=1, first_index=101)
        for name in ("train", "test"):
            run_preprocess(tmp / f"{name}_raw", tmp / name, PreprocessOptions(), progress=False, log=lambda m: None)
        from hydra import compose, initialize_config_dir

        from sam3d_med.train.trainer import train

        configs = Path(__file__).resolve().parents[1] / "configs"
        with initialize_config_dir(config_dir=str(configs), version_base=None):
            cfg = compose("train", overrides=["experiment=demo_tiny", f"data.slice_cache_dir={tmp / 'train'}",
                                              f"training.checkpoint_dir={tmp / 'ckpt'}", "training.epochs=1",
                                              "training.max_steps_per_epoch=1", "validation.reconstructions=1",
                                              "validation.max_batches=1"])
        train(cfg, tmp / "run")
        runs, run_numbers = {}, itertools.count()
        for name, save_viz in (("without figures", False), ("--save_viz", True)):
            def run_once():  # every run scores into a new folder: nothing is reused from an earlier run
                out = tmp / f"results_{next(run_numbers)}"
                runs["document"] = evaluate(tmp / "ckpt" / "last.pt", tmp / "test", out, EvalOptions(batch_size=8),
                                            log=lambda m: None,
                                            case_visuals=write_evaluation_case_visuals if save_viz else None)
                runs["folder"] = out
            runs[name] = median_seconds(run_once, args.eval_repeats)
        n_samples = sum(1 for r in runs["document"]["records"] if r["method"] == "model")
        report_seconds = median_seconds(lambda: write_report(runs["folder"]), args.eval_repeats)
        report_mb = (runs["folder"] / "report.html").stat().st_size / 1e6
        print(f"evaluation runner, tiny preset, CPU ({torch.get_num_threads()} threads), {args.cases} phantom cases "
              f"x 5 classes x 3 axes = {n_samples} reconstructions (+2 baselines each), median of {args.eval_repeats}")
        print(f"{'run':>18} {'s':>7} {'cases/s':>8} {'vs first':>9}")
        for name in ("without figures", "--save_viz"):
            print(f"{name:>18} {runs[name]:>7.1f} {args.cases / runs[name]:>8.2f} {runs[name] / runs['without figures']:>9.2f}")
        print(f"{'report (HTML)':>18} {report_seconds:>7.1f}  ({report_mb:.1f} MB, 3 cases in the 3-D view)")

        sdf = np.load(tmp / "test" / "s0101_sdf.npy")
        truth = sdf[1] < 0
        pred = np.roll(sdf[1] < 3.0, 2, axis=0)  # a dilated, shifted stand-in prediction
        spacing = (3.0, 3.0, 3.0)
        ours = median_seconds(lambda: segmentation_metrics(pred, truth, spacing), args.repeats)
        reference = median_seconds(lambda: monai_metrics(pred, truth, spacing), args.repeats)
        print(f"\nmetrics for one structure (Dice, HD95, Chamfer, NSD@1/3/6 mm; 64^3), median of {args.repeats}")
        print(f"{'implementation':>16} {'ms':>8} {'vs MONAI':>9}")
        print(f"{'MONAI':>16} {reference * 1000:>8.1f} {1.0:>9.2f}")
        print(f"{'sam3d_med':>16} {ours * 1000:>8.1f} {reference / ours:>9.2f}")


if __name__ == "__main__":
    main()
