#!/usr/bin/env python
"""How fast each command of the tutorial answers a wrong argument (issue: every command checks its
arguments, paths and input headers before it imports torch or builds a model).

Builds one synthetic phantom case (and its cache) and a stand-in checkpoint file, then runs each
command with one wrong argument ``--runs`` times as a user would (a new process each time) and prints
the median and the slowest wall time with the error line. The reference row is ``python -c pass``
(the interpreter's own start) in the same run.

    python benchmarks/bench_argument_errors.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cases(work: Path) -> list[tuple[str, list[str]]]:
    image, label = work / "raw" / "s0001" / "s0001-image.nii.gz", work / "raw" / "s0001" / "s0001-label.nii.gz"
    ckpt = work / "best.pt"
    py = [sys.executable]
    cli = [*py, "-m", "sam3d_med.cli"]
    return [
        ("python -c pass (reference)", [*py, "-c", "pass"]),
        ("visualize_comparison.py --slice_idx 64", [*py, str(REPO / "scripts/visualize_comparison.py"), "--checkpoint",
                                                    str(ckpt), "--volume", str(image), "--slice_idx", "64", "--axis", "2",
                                                    "--output", str(work / "c.png")]),
        ("visualize_comparison.py, no mask", [*py, str(REPO / "scripts/visualize_comparison.py"), "--checkpoint",
                                              str(ckpt), "--volume", str(work / "plain.nii.gz"), "--slice_idx", "32",
                                              "--axis", "2", "--output", str(work / "c.png")]),
        ("eval_medical.py, no such cache", [*py, str(REPO / "scripts/eval_medical.py"), "--checkpoint", str(ckpt),
                                            "--data_root", str(work / "nope"), "--output_dir", str(work / "e")]),
        ("eval_medical.py --batch_size 0", [*py, str(REPO / "scripts/eval_medical.py"), "--checkpoint", str(ckpt),
                                            "--data_root", str(work / "cache"), "--batch_size", "0"]),
        ("visualize_finetuned.py, no such PNG", [*py, str(REPO / "scripts/visualize_finetuned.py"), "--lora_checkpoint",
                                                 str(ckpt), "--image", str(work / "nope.png"), "--mask_dir",
                                                 str(work), "--mask_index", "0"]),
        ("predict --slice_idx 999", [*cli, "predict", "--checkpoint", str(ckpt), "--image", str(image), "--axis", "2",
                                     "--slice_idx", "999", "--label", str(label), "--class", "2", "--out",
                                     str(work / "p.nii.gz")]),
        ("predict --class 9", [*cli, "predict", "--checkpoint", str(ckpt), "--image", str(image), "--axis", "2",
                               "--slice_idx", "32", "--label", str(label), "--class", "9", "--out",
                               str(work / "p.nii.gz")]),
        ("predict, label on another grid", [*cli, "predict", "--checkpoint", str(ckpt), "--image", str(image), "--axis",
                                            "2", "--slice_idx", "32", "--label", str(work / "mirrored.nii.gz"),
                                            "--class", "2", "--out", str(work / "p.nii.gz")]),
        ("predict, damaged checkpoint", [*cli, "predict", "--checkpoint", str(work / "damaged.pt"), "--image", str(image),
                                         "--axis", "2", "--slice_idx", "32", "--label", str(label), "--class", "2",
                                         "--out", str(work / "p.nii.gz")]),
        ("report, not an evaluation", [*cli, "report", str(work)]),
        ("crop --labels total", [*cli, "crop", "--image", str(image), "--label", str(label), "--out", str(work / "x"),
                                 "--case_id", "s0001", "--labels", "total"]),
        ("export-slice --slice_idx 64", [*cli, "export-slice", "--image", str(image), "--label", str(label),
                                         "--slice_idx", "64", "--out", str(work / "x")]),
        ("download --repo bad", [*py, str(REPO / "scripts/download_hf_checkpoints.py"), "--repo", "bad", "--out",
                                 str(work / "hf")]),
        ("train_medical_hydra.py training.batch_size=0", [*py, str(REPO / "scripts/train_medical_hydra.py"),
                                                          "training.batch_size=0", f"hydra.run.dir={work / 'run'}"]),
        ("run_medical_pipeline.sh --gpu 1", ["bash", str(REPO / "scripts/run_medical_pipeline.sh"), "--gpu", "1",
                                             f"data.slice_cache_dir={work / 'cache'}", f"hydra.run.dir={work / 'run'}"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    import shutil

    import nibabel as nib
    import numpy as np

    from sam3d_med.data.phantom import write_phantom_dataset
    from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess

    work = Path(tempfile.mkdtemp(prefix="bench_argument_errors_"))
    write_phantom_dataset(work / "raw", 1, seed=0)
    run_preprocess(work / "raw", work / "cache", PreprocessOptions(axes=(2,)), progress=False, log=lambda m: None)
    shutil.copy(work / "raw" / "s0001" / "s0001-image.nii.gz", work / "plain.nii.gz")
    with zipfile.ZipFile(work / "best.pt", "w") as archive:  # passes the file check; never loaded
        archive.writestr("best/data.pkl", b"")
    (work / "damaged.pt").write_bytes(b"\x80\x02 not a whole archive")
    label_img = nib.load(work / "raw" / "s0001" / "s0001-label.nii.gz")
    mirrored = label_img.affine.copy()
    mirrored[:3, 1] *= -1  # the label's header mirrors it front to back in the world
    nib.save(nib.Nifti1Image(np.asarray(label_img.dataobj), mirrored), work / "mirrored.nii.gz")
    import os

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    print(f"{'command (wrong argument)':<46}{'median s':>10}{'max s':>8}  error line")
    for name, command in cases(work):
        times, line = [], ""
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env, timeout=120)
            times.append(time.perf_counter() - started)
            lines = [x for x in done.stderr.strip().splitlines() if x.startswith(("error", "usage"))] or [""]
            line = f"[{done.returncode}] {lines[-1][:90]}"
        print(f"{name:<46}{statistics.median(times):>10.2f}{max(times):>8.2f}  {line}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
