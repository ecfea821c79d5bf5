import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sam3d_med.data.dataset import load_manifest
from sam3d_med.data.dataset import choose_slices
from sam3d_med.eval.runner import EvalOptions, TrainingPriors, evaluate
from sam3d_med.errors import ConfigError, InputError
from sam3d_med.viz.comparison import case_surfaces, load_case_volumes
from tests.conftest import assert_png_not_blank

REPO = Path(__file__).resolve().parents[2]


def test_slice_policies(cache_dir):
    case = json.loads((cache_dir / "manifest.json").read_text())["cases"][0]
    chosen = choose_slices(case, [0, 1, 2], "max_area")
    assert len(chosen) == 5 * 3
    for entry, cls in chosen:
        same_axis = [e for e in case["slices"] if e["axis"] == entry["axis"]]
        assert entry["class_pixel_counts"][str(cls)] == max(e["class_pixel_counts"].get(str(cls), 0) for e in same_axis)
    centred = choose_slices(case, [2], "center")
    assert all(e["class_pixel_counts"].get(str(c), 0) > 0 for e, c in centred)


def test_extrude_baseline_repeats_the_slice_over_the_typical_extent(cache_dir):
    priors = TrainingPriors(cache_dir, load_manifest(cache_dir), ["s0001", "s0002"], [1, 2, 3, 4, 5])
    occ = np.zeros((64, 64, 64), bool)
    occ[20:30, 10:20, 30:40] = True
    out = priors.extrude(occ, 2, axis=2, slice_idx=35)
    extent = priors.extent[2][2]
    assert out.sum() == 100 * extent and out[25, 15, 35] and not out[5, 15, 35]
    assert priors.mean_occupancy[2].dtype == bool and priors.mean_occupancy[2].any()


def test_evaluation_writes_metrics_and_resumes(trained, tmp_path):
    out = tmp_path / "results"
    options = EvalOptions(batch_size=4, steps=2, max_cases=2)
    document = evaluate(trained / "ckpt" / "best.pt", trained / "test_cache", out, options, log=lambda m: None)
    records = document["records"]
    assert {r["method"] for r in records} == {"model", "mean_shape", "extrude"}
    assert len(records) == 2 * 5 * 2 * 3  # cases x classes x axes x methods
    saved = json.loads((out / "metrics.json").read_text())  # strict JSON: non-finite values as strings
    assert saved["protocol"]["policy"] == "max_area" and saved["protocol"]["sampler"]["steps"] == 2
    assert set(saved["summary"]["model"]["per_class"]) == {"left_atrium", "left_ventricle", "right_atrium",
                                                            "right_ventricle", "myocardium"}
    assert {"mean", "std", "median", "count", "nan", "inf"} <= set(saved["summary"]["extrude"]["overall"]["dice"])
    assert saved["summary"]["extrude"]["overall"]["dice"]["mean"] > 0.3  # the baseline is sensible
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("case_id,class_id,class_name,axis")
    assert saved["warnings"] == []  # new cases: no overlap with the training cache
    stamp = (out / "cases" / "s0201.json").stat().st_mtime_ns
    again = evaluate(trained / "ckpt" / "best.pt", trained / "test_cache", out, options, log=lambda m: None)
    assert (out / "cases" / "s0201.json").stat().st_mtime_ns == stamp and len(again["records"]) == len(records)


def test_a_checkpoint_retrained_in_place_is_scored_anew(trained, tmp_path):
    """Resuming matches the weights, not the path: best.pt overwritten by another run is not served
    the old run's scores."""
    import torch

    from sam3d_med.train.trainer import read_training_checkpoint, save_training_checkpoint

    checkpoint, out = tmp_path / "best.pt", tmp_path / "results"
    payload = read_training_checkpoint(trained / "ckpt" / "best.pt")
    save_training_checkpoint(checkpoint, payload)
    options = EvalOptions(batch_size=8, steps=2, max_cases=1)
    first = evaluate(checkpoint, trained / "test_cache", out, options, log=lambda m: None)
    stamp = (out / "cases" / "s0201.json").stat().st_mtime_ns
    name = next(k for k, v in payload["trained_state"].items() if v.is_floating_point())
    payload["trained_state"][name] = payload["trained_state"][name] + 0.5 * torch.randn_like(payload["trained_state"][name])
    save_training_checkpoint(checkpoint, payload)  # the same path, other weights
    second = evaluate(checkpoint, trained / "test_cache", out, options, log=lambda m: None)
    assert (out / "cases" / "s0201.json").stat().st_mtime_ns != stamp
    assert first["protocol"]["weights"]["trained_sha256"] != second["protocol"]["weights"]["trained_sha256"]


def test_bad_inputs(trained, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="unreadable checkpoint"):
        evaluate(junk, trained / "test_cache", tmp_path / "r", EvalOptions(), log=lambda m: None)
    with pytest.raises(InputError, match="cache folder does not exist"):
        evaluate(trained / "ckpt" / "best.pt", tmp_path / "missing", tmp_path / "r", EvalOptions(), log=lambda m: None)


@pytest.mark.e2e
def test_tutorial_command(trained, tmp_path):
    args = [sys.executable, str(REPO / "scripts" / "eval_medical.py"), "--checkpoint", str(trained / "ckpt" / "best.pt"),
            "--data_root", str(trained / "test_cache"), "--output_dir", str(tmp_path / "results"), "--batch_size", "8",
            "--steps", "2", "--max_cases", "1"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mean_shape Dice" in done.stdout and (tmp_path / "results" / "metrics.json").is_file()
    # --save_viz on the same folder: the scored case is redone because its figure is missing.
    viz = subprocess.run(args + ["--save_viz"], capture_output=True, text=True, timeout=300)
    assert viz.returncode == 0, viz.stderr[-2000:]
    figure = tmp_path / "results" / "visualizations" / "s0201.png"
    assert_png_not_blank(figure, min_size=(800, 500))
    logits, true_labels, affine = load_case_volumes(tmp_path / "results" / "visualizations" / "s0201_volumes.npz")
    assert sorted(logits) == [1, 2, 3, 4, 5] and true_labels.shape == (64, 64, 64)
    assert set(np.unique(true_labels)) == {0, 1, 2, 3, 4, 5} and affine.shape == (4, 4)
    for c, surfaces in case_surfaces(logits, affine, true_labels).items():  # closed surfaces in world mm
        assert surfaces["true"].is_watertight and surfaces["true"].volume > 0


def test_the_table_shows_inf_counts_never_nan_mm():
    from sam3d_med.eval.metrics import summarize
    from sam3d_med.eval.runner import METHODS, distance_cell, summary_table

    all_inf, some_inf = summarize([float("inf")] * 3), summarize([4.0, 6.0, float("inf")])
    assert distance_cell(all_inf) == "inf (3 of 3)" and distance_cell(some_inf) == "6.0 mm (1 inf)"
    assert distance_cell(summarize([0.0, float("inf"), float("inf"), float("inf")])) == "inf (3 of 4)"
    assert distance_cell(summarize([float("nan")])) == "no values"
    stats = {"dice": summarize([0.0, 0.0, 0.0]), "hd95_mm": all_inf}
    document = {"summary": {m: {"overall": stats, "per_class": {"left atrium": stats}} for m in METHODS}}
    table = summary_table(document)
    assert "nan" not in table and table.count("inf (3 of 3)") == 2 * len(METHODS)


def test_evaluating_on_training_cases_warns_loudly(trained, cache_dir, tmp_path):
    """Matched by content, not id: the phantom generator reuses ids (s0001...) for other cases."""
    from sam3d_med.eval.runner import leakage_warning

    train_manifest, test_manifest = load_manifest(cache_dir), load_manifest(trained / "test_cache")
    assert leakage_warning(test_manifest, train_manifest) is None
    renamed = {**train_manifest, "cases": [{**c, "case_id": f"x{i}"} for i, c in enumerate(train_manifest["cases"])]}
    warning = leakage_warning(renamed, train_manifest)
    assert warning.startswith(f"{len(train_manifest['cases'])} of {len(train_manifest['cases'])} test cases are cases "
                              f"of the training cache (x0, x1") and "memorisation" in warning
    same_ids = {**test_manifest, "cases": [{**c, "case_id": f"s{i + 1:04d}"} for i, c in enumerate(test_manifest["cases"])]}
    assert leakage_warning(same_ids, train_manifest) is None
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "eval_medical.py"), "--checkpoint",
                           str(trained / "ckpt" / "best.pt"), "--data_root", str(cache_dir), "--output_dir",
                           str(tmp_path / "out"), "--steps", "1", "--max_cases", "1", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("WARNING: 3 of 3 test cases are cases of the training cache") == 2
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["warnings"][0].startswith("3 of 3")


def test_no_summary_shows_a_failed_model_as_the_best(tmp_path):
    """The model's prediction empty for 3 of 4 structures and perfect for the fourth, the baselines one
    voxel (3 mm) off everywhere: the model's HD95 and Chamfer are inf (median(0, inf, inf, inf)), the
    baselines' 3.0 mm are best, in the console table, metrics.json, metrics.csv and the report."""
    import csv

    from sam3d_med.eval.runner import EvalOptions, summary_table, write_reports
    from sam3d_med.viz.report import build_report

    names = {"1": "left_atrium", "2": "left_ventricle", "3": "right_atrium", "4": "right_ventricle"}
    records = []
    for c in range(1, 5):
        base = {"case_id": "s0001", "class_id": c, "class_name": names[str(c)], "axis": 2, "slice_idx": 30}
        failed = c > 1
        records.append({**base, "method": "model", "dice": 0.0 if failed else 1.0,
                        "hd95_mm": float("inf") if failed else 0.0, "chamfer_mm": float("inf") if failed else 0.0,
                        "nsd_1mm": 0.0 if failed else 1.0, "nsd_3mm": 0.0 if failed else 1.0, "nsd_6mm": 0.0 if failed else 1.0})
        for method in ("mean_shape", "extrude"):
            records.append({**base, "method": method, "dice": 0.8, "hd95_mm": 3.0, "chamfer_mm": 3.0,
                            "nsd_1mm": 0.5, "nsd_3mm": 1.0, "nsd_6mm": 1.0})
    protocol = {"checkpoint": "best.pt", "policy": "max_area", "threshold": 0.5, "sampler": {}, "seed": 0,
                "nsd_tolerances_mm": [1.0, 3.0, 6.0]}
    document = write_reports(records, tmp_path, protocol, names, EvalOptions())
    overall = document["summary"]["model"]["overall"]
    assert overall["hd95_mm"]["median"] == float("inf") and overall["chamfer_mm"]["median"] == float("inf")
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"]["model"]["overall"]["hd95_mm"]["median"] == "inf"
    table = summary_table(document)
    assert table.splitlines()[-1].split()[1:4] == ["0.250", "inf", "(3"]  # (all): model Dice, then HD95 inf (3 of 4)
    with open(tmp_path / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == "model"]
    assert sorted(r["hd95_mm"] for r in rows) == ["0.0", "inf", "inf", "inf"]
    report = build_report(tmp_path)
    comparison = report[report.index("<h2>Baseline comparison</h2>"):]
    all_row = comparison[comparison.index("<th>all classes</th>"):]
    all_row = all_row[:all_row.index("</tr>")]
    cells = all_row.split("<td>")[1:]
    hd95 = cells[3:6]  # Dice x 3 methods, then HD95 x 3 (model, mean_shape, extrude)
    assert "&infin;" in hd95[0] and "3 of 4 inf" in hd95[0] and "<b>" not in hd95[0]
    assert hd95[1].startswith("<b>3.0") and hd95[2].startswith("<b>3.0")


def test_test_classes_are_matched_to_training_classes_by_name_or_a_named_union():
    from sam3d_med.eval.runner import training_classes_of

    train = {"1": "left_atrium", "2": "left_ventricle", "3": "right_atrium", "4": "right_ventricle", "5": "myocardium"}
    assert training_classes_of(train, train, None, "t") == {c: (c,) for c in range(1, 6)}
    assert training_classes_of({"1": "left_ventricle", "2": "myocardium"}, train, None, "t") == {1: (2,), 2: (5,)}
    both = {"1": "heart", "2": "pulmonary_artery"}
    with pytest.raises(InputError, match=r"\['heart', 'pulmonary_artery'\] are not training classes.*class_unions heart="):
        training_classes_of(both, train, None, "t")
    with pytest.raises(InputError, match="pulmonary_artery"):  # a union for one: the other is still named
        training_classes_of(both, train, {"heart": (1, 2, 3, 4, 5)}, "t")
    assert training_classes_of({"1": "heart"}, train, {"heart": (1, 2, 3, 4, 5)}, "t") == {1: (1, 2, 3, 4, 5)}
    with pytest.raises(InputError, match=r"training has no classes \[7\]"):
        training_classes_of({"1": "heart"}, train, {"heart": (1, 7)}, "t")


def test_a_union_class_has_the_union_as_its_priors(cache_dir):
    manifest = load_manifest(cache_dir)
    ids = ["s0001", "s0002"]
    single = TrainingPriors(cache_dir, manifest, ids, [2, 5])
    union = TrainingPriors(cache_dir, manifest, ids, {1: (2, 5)})
    assert (union.mean_occupancy[1] >= (single.mean_occupancy[2] | single.mean_occupancy[5])).all()
    assert union.mean_occupancy[1].sum() > single.mean_occupancy[5].sum()
    assert all(u >= max(a, b) for u, a, b in zip(union.extent[1], single.extent[2], single.extent[5]))


def test_a_whole_heart_is_scored_as_the_union_of_the_training_chambers(trained, tmp_path):
    import nibabel as nib

    from sam3d_med.data.phantom import write_phantom_dataset
    from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess

    raw = tmp_path / "raw"
    write_phantom_dataset(raw, 1, seed=5, first_index=301)
    label_path = raw / "s0301" / "s0301-label.nii.gz"
    img = nib.load(label_path)
    nib.save(nib.Nifti1Image((np.asarray(img.dataobj) > 0).astype(np.uint8), img.affine, img.header), label_path)
    (raw / "classes.json").write_text(json.dumps({"class_names": {"1": "heart"}}))
    run_preprocess(raw, tmp_path / "cache", PreprocessOptions(classes=1, axes=(2,), class_names={1: "heart"}),
                   progress=False, log=lambda m: None)
    with pytest.raises(InputError, match="class_unions heart="):
        evaluate(trained / "ckpt" / "best.pt", tmp_path / "cache", tmp_path / "out", EvalOptions(steps=1),
                 log=lambda m: None)
    options = EvalOptions(steps=1, batch_size=4, class_unions={"heart": (1, 2, 3, 4, 5)})
    document = evaluate(trained / "ckpt" / "best.pt", tmp_path / "cache", tmp_path / "out", options, log=lambda m: None)
    assert {(r["class_name"], r["method"]) for r in document["records"]} == {("heart", m) for m in ("model", "mean_shape", "extrude")}
    assert document["protocol"]["class_unions"] == {"heart": [1, 2, 3, 4, 5]}
    mean_shape = next(r for r in document["records"] if r["method"] == "mean_shape")
    assert mean_shape["dice"] > 0.5  # the chambers' mean union is a whole heart


@pytest.mark.e2e
def test_a_unet_baseline_is_a_row_of_every_output(trained, cache_dir, tmp_path):
    from sam3d_med.train.unet_baseline import train_unet

    unet = tmp_path / "unet.pt"
    train_unet(cache_dir, unet, steps=3, batch_size=2, channels=(4, 8), strides=(2,), progress=False, log=lambda m: None)
    args = [sys.executable, str(REPO / "scripts" / "eval_medical.py"), "--checkpoint", str(trained / "ckpt" / "best.pt"),
            "--data_root", str(trained / "test_cache"), "--output_dir", str(tmp_path / "results"), "--steps", "1",
            "--max_cases", "1", "--baseline", f"unet={unet}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unet Dice" in done.stdout.splitlines()[0]
    saved = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert saved["protocol"]["baselines"] == ["mean_shape", "extrude", "unet"] and "sha256" in json.dumps(saved["protocol"]["unet"])
    assert set(saved["summary"]["unet"]["per_class"]) == set(saved["summary"]["model"]["per_class"])
    rows = (tmp_path / "results" / "metrics.csv").read_text().splitlines()
    assert sum(",unet," in r for r in rows) == sum(",model," in r for r in rows) == 5 * 2
    from sam3d_med.viz.report import build_report

    assert "3-D U-Net" in build_report(tmp_path / "results")
    assert saved["warnings"] == []
    # an interrupted U-Net is scored, and said to be one
    from sam3d_med.model.unet_baseline import load_unet_baseline

    partial = load_unet_baseline(unet)
    partial.training.update(completed=False, planned_steps=10)
    partial.save(tmp_path / "partial.pt")
    done = subprocess.run(args[:-1] + [f"unet={tmp_path / 'partial.pt'}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "interrupted training (3 of 10 steps)" in done.stderr, done.stderr[-2000:]
    # a LoRA checkpoint given as the U-Net, or a missing file: one line, before anything is scored
    for wrong, message in ((trained / "ckpt" / "best.pt", "U-Net"), (tmp_path / "none.pt", "does not exist")):
        bad = subprocess.run(args[:-1] + [f"unet={wrong}"], capture_output=True, text=True, timeout=300)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr


def test_a_metric_added_to_the_table_reaches_every_output(trained, tmp_path, monkeypatch):
    from sam3d_med.eval import metrics
    from sam3d_med.eval.runner import summary_table
    from sam3d_med.viz.report import build_report

    volume_ratio = metrics.Metric("volume_ratio", "VolRatio", "", True, "mean", 0.0, lambda p: p.n_pred / p.n_truth)
    monkeypatch.setattr(metrics, "METRICS", metrics.METRICS + [volume_ratio])
    out = tmp_path / "results"
    document = evaluate(trained / "ckpt" / "best.pt", trained / "test_cache", out, EvalOptions(steps=1, max_cases=1),
                        log=lambda m: None)
    saved = json.loads((out / "metrics.json").read_text())
    assert all(r["volume_ratio"] > 0 for r in saved["records"])
    assert saved["summary"]["extrude"]["overall"]["volume_ratio"]["count"] == 5 * 2  # classes x cached axes
    assert "volume_ratio" in (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "model VolRatio" in summary_table(document).splitlines()[0]
    assert "VolRatio (mean)" in build_report(out)


def test_a_class_can_be_left_out_and_stray_names_are_refused():
    from sam3d_med.eval.runner import training_classes_of

    train = {"1": "left_atrium", "2": "left_ventricle", "3": "right_atrium", "4": "right_ventricle", "5": "myocardium"}
    both = {"1": "heart", "2": "pulmonary_artery"}
    with pytest.raises(InputError, match="exclude_classes heart"):
        training_classes_of(both, train, None, "t")
    assert training_classes_of(both, train, {"heart": (1, 2, 3, 4, 5)}, "t", ("pulmonary_artery",)) == {1: (1, 2, 3, 4, 5)}
    with pytest.raises(InputError, match=r"name classes \['aorta'\] that the test cache does not have"):
        training_classes_of(both, train, {"heart": (1, 2), "aorta": (1,)}, "t", ("pulmonary_artery",))
    with pytest.raises(InputError, match="every class is excluded"):
        training_classes_of({"1": "left_atrium"}, train, None, "t", ("left_atrium",))


def test_a_class_no_training_case_has_is_scored_with_a_warning():
    from sam3d_med.eval.runner import unseen_class_warnings

    names = {"1": "left_atrium", "2": "myocardium"}
    manifest = {"cases": [{"case_id": "a", "class_voxel_counts": {"1": 10, "2": 0}},
                          {"case_id": "b", "class_voxel_counts": {"1": 0, "2": 7}}]}
    assert unseen_class_warnings({1: (1,), 2: (2,)}, names, manifest, ["a", "b"]) == []
    (warning,) = unseen_class_warnings({1: (1,), 2: (2,)}, names, manifest, ["a"])
    assert warning.startswith("class myocardium: none of the 1 training cases has it")


def test_several_input_slices_are_scored_with_baselines_on_the_same_slices(trained, tmp_path):
    """K = 2: each reconstruction conditions on two slices, both planes are the given masks, the visual
    hull of the same slices is scored (no extrude), and the slices are recorded; parallel slices add
    shape-based interpolation. The test cache has axes 0 and 2 only: K = 3 orthogonal takes the two there are."""
    import nibabel as nib

    from sam3d_med.cli import main

    from sam3d_med.viz.comparison import write_evaluation_case_visuals

    out = tmp_path / "two"
    options = EvalOptions(batch_size=4, steps=2, max_cases=1, num_slices=2)
    document = evaluate(trained / "ckpt" / "best.pt", trained / "test_cache", out, options, log=lambda m: None,
                        case_visuals=write_evaluation_case_visuals)
    assert_png_not_blank(out / "visualizations" / "s0201.png")
    records = document["records"]
    assert {r["method"] for r in records} == {"model", "mean_shape", "visual_hull"}
    assert document["protocol"]["input_slices"] == {"num_slices": 2, "slice_policy": "orthogonal", "slice_spacing_mm": 15.0}
    assert all(len(r["input_slices"]) == 2 and r["input_slices"][0] == [r["axis"], r["slice_idx"]]
               and r["input_slices"][0][0] != r["input_slices"][1][0] for r in records)
    one = evaluate(trained / "ckpt" / "best.pt", trained / "test_cache", tmp_path / "one",
                   EvalOptions(batch_size=4, steps=2, max_cases=1), log=lambda m: None)
    hull = document["summary"]["visual_hull"]["overall"]["dice"]["mean"]
    extrude = one["summary"]["extrude"]["overall"]["dice"]["mean"]
    assert hull > extrude, (hull, extrude)  # two silhouettes bound the shape better than one
    assert "input_slices" in (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "input_slices" not in (tmp_path / "one" / "metrics.csv").read_text().splitlines()[0].split(",")
    parallel = evaluate(trained / "ckpt" / "best.pt", trained / "test_cache", tmp_path / "parallel",
                        EvalOptions(batch_size=4, steps=2, max_cases=1, num_slices=2, slice_policy="parallel",
                                    slice_spacing_mm=6.0), log=lambda m: None)
    assert {r["method"] for r in parallel["records"]} == {"model", "mean_shape", "visual_hull", "interpolation"}
    assert all(r["input_slices"][0][0] == r["input_slices"][1][0] for r in parallel["records"])
    three = evaluate(trained / "ckpt" / "best.pt", trained / "test_cache", tmp_path / "three",
                     EvalOptions(batch_size=4, steps=2, max_cases=1, num_slices=3), log=lambda m: None)
    assert max(len(r["input_slices"]) for r in three["records"]) == 2
    # the command line: its flags, and a wrong value named as its flag
    assert main(["eval", "--checkpoint", str(trained / "ckpt" / "best.pt"), "--data_root", str(trained / "test_cache"),
                 "--output_dir", str(tmp_path / "cli"), "--steps", "1", "--max_cases", "1", "--num_slices", "4"]) == 1
    del nib
    with pytest.raises(ConfigError, match="slice_spacing_mm=0: must be more than 0"):
        EvalOptions(num_slices=2, slice_policy="parallel", slice_spacing_mm=0)
