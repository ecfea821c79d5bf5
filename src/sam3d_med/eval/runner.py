"""The evaluation protocol (tutorial step 4).

For every test case and every class present in it, and for each slicing axis of the cache, one
conditioning slice is chosen by ``policy`` ("max_area": the slice with the largest area of that class,
the default; "center": the slice through the class's centroid). The model samples a reconstruction
(steps, guidance and seed from the checkpoint's model settings unless overridden), brought onto the
case's grid in the checkpoint's target frame (object frame: the predicted shape placed by the
predicted pose, ``model.placement``; volume frame: the case's n^3 window around its structures,
``data.volume_window``, put back on the case's grid), its input plane set to the input mask unless
``input_slice_constraint`` is off (that slice is given, not predicted), thresholded at logit 0
(probability 0.5), and scored against the ground truth on the case's grid with its spacing
(``metrics.segmentation_metrics``). Sampler settings: the model's, overridden by the
checkpoint's validation settings (what its validation Dice was measured with), overridden by the
command line. Two baselines are scored on the same samples:
- ``mean_shape``: the training cases' mean occupancy of the class, thresholded at 0.5;
- ``extrude``: the input slice's mask repeated along the slice axis over the class's median extent
  (in voxels) along that axis in the training cases, centred on the input slice;
and with ``unet_checkpoint`` a third, ``unet``: a supervised 3-D U-Net trained on the training cache
(``sam3d-med train-unet``, ``model.unet_baseline``) from the same input slice's image and mask.
With ``num_slices`` K > 1 the model conditions on K input slices: the policy's slice first, the others
chosen by ``slice_policy`` (``data.slice_policies``: orthogonal, the class's largest section along each
other axis; parallel, ``slice_spacing_mm`` apart; random, seeded; fewer where the case has fewer); its
pose is fitted to all of them and each of their planes is set to its mask; the baselines use the same
slices: ``visual_hull`` (each slice's mask extruded along its axis over the class's median extent,
intersected; ``extrude`` is its K = 1 case) and, for parallel slices, ``interpolation`` (shape-based
interpolation of the slices' signed distances, ``slice_baselines``); each record has the slices used
(``input_slices``: [[axis, index], ...]).
A test class the training did not have (e.g. a whole heart after training on its chambers) is scored
only when ``class_unions`` names the training classes it is the union of: the model as for any class,
the baselines from the union's occupancy and extent, the U-Net with those classes' inputs on; or left
out when ``exclude_classes`` names it; other unknown classes are refused (before any is scored). A
scored class that no training case has is scored with a warning (metrics.json ``warnings``).
Results per case go to ``cases/<id>.json`` as soon as the case is scored, so a re-run skips cases
already scored with the same protocol; ``metrics.json`` and ``metrics.csv`` are written at the end
(``layout``: where each file goes). With a ``case_visuals`` writer (the command line's ``--save_viz``
hands it ``viz.comparison.write_evaluation_case_visuals``), each case also gets ``visualizations/<id>.png`` (input, truth, prediction and
error over slices along every axis; each class as reconstructed from its axial slice) and
``visualizations/<id>_volumes.npz`` (per-class logits, true labels, affine), from which the HTML
report draws predicted and true surfaces.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.metadata
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import __version__
from ..data.dataset import (POLICIES, SliceClassDataset, choose_slices, collate_samples,
                            load_manifest, split_cases)
from ..data.cache import case_grid, case_ids_of, case_sdf, case_spacing, cases_of
from ..data.preprocess import case_fingerprint
from ..data.geometry import bounding_box, centred_on
from ..errors import ConfigError, InputError
from ..io.atomic import atomic_write_json, atomic_write_text
from ..data.frames import TargetFrame, target_frame
from ..data.input_slices import MAX_SLICES, SLICE_POLICIES, InputSlices
from ..model.placement import SLICE_LOGIT, impose_input_slices, reconstruct_on_grid
from ..model.sam3d import condition_of
from ..model.trained import TrainedModel, sampler_settings
from ..settings import RunSettings
from .layout import CASES_DIR, METRICS_CSV, METRICS_JSON, VIZ_DIR, case_figure_path, case_record_path
from .slice_baselines import InputPlane, extruded, shape_based_interpolation, visual_hull
from .metrics import DEFAULT_NSD_TOLERANCES_MM, NSD_DEFINITIONS, metric_table, segmentation_metrics, summarize

NSD_DESCRIPTIONS = {
    "surface_area": "surface_area: surface elements weighted by area, the reference definition (Nikolov et al.; "
                    "MONAI compute_surface_dice use_subvoxels=True)",
    "boundary_voxels": "boundary_voxels: boundary voxels counted (MONAI compute_surface_dice default)",
}
assert set(NSD_DESCRIPTIONS) == set(NSD_DEFINITIONS)

METHODS = ("model", "mean_shape", "extrude")  # always scored; "unet" too when a U-Net checkpoint is given
UNET_METHOD = "unet"
@dataclasses.dataclass
class EvalOptions:
    policy: str = "max_area"
    steps: int | None = None
    guidance: float | None = None
    samples: int | None = None  # draws averaged per input (default: the checkpoint's validation.eval_samples)
    seed: int = 0
    batch_size: int = 8
    nsd_tolerances_mm: tuple[float, ...] = DEFAULT_NSD_TOLERANCES_MM
    nsd_definition: str = "surface_area"  # the reference definition; "boundary_voxels": MONAI's default count
    train_cache: str | None = None  # default: the training cache named in the checkpoint
    max_cases: int | None = None
    input_slice_constraint: bool = True  # the prediction on the input plane is the input mask
    pose_fit: bool = True  # object frame: the pose is fitted to the input slice's mask (``model.placement``)
    unet_checkpoint: str | None = None  # a third baseline: a 3-D U-Net trained on the training cache
    # test class name -> the training classes it is the union of (a class the training did not have)
    class_unions: dict[str, tuple[int, ...]] | None = None
    exclude_classes: tuple[str, ...] = ()  # test class names left out (no training class is them)
    num_slices: int = 1  # input slices per reconstruction: the policy's slice, then ``slice_policy``'s
    slice_policy: str = "orthogonal"  # the further slices (``data.slice_policies``)
    slice_spacing_mm: float = 15.0  # parallel slices: their spacing

    @property
    def baselines(self) -> tuple[str, ...]:
        """The baselines scored beside the model on these input slices (``unet`` is added when given)."""
        if self.num_slices == 1:
            return ("mean_shape", "extrude")
        return ("mean_shape", "visual_hull") + (("interpolation",) if self.slice_policy == "parallel" else ())

    @property
    def fits_pose(self) -> bool:
        """The pose is fitted to the input slice: asked for, and the input slice used at all."""
        return self.pose_fit and self.input_slice_constraint

    def __post_init__(self):  # checked where the options are made, before any model is loaded
        if self.policy not in POLICIES:
            raise ConfigError(f"must be one of {', '.join(POLICIES)}", parameter="policy", value=self.policy)
        if isinstance(self.num_slices, bool) or not isinstance(self.num_slices, int) or not 1 <= self.num_slices <= MAX_SLICES:
            raise ConfigError(f"must be a whole number in 1..{MAX_SLICES}", parameter="num_slices", value=self.num_slices)
        if isinstance(self.slice_spacing_mm, bool) or not self.slice_spacing_mm > 0:
            raise ConfigError("must be more than 0 (mm)", parameter="slice_spacing_mm", value=self.slice_spacing_mm)
        if self.slice_policy not in SLICE_POLICIES:
            raise ConfigError(f"must be one of {', '.join(SLICE_POLICIES)}", parameter="slice_policy",
                              value=self.slice_policy)


class TrainingPriors:
    """Mean occupancy per class and median extent per class and axis over the training cases.

    ``classes``: the classes' label values, or {class: training labels it is the union of}."""

    def __init__(self, cache_dir: Path, manifest: dict, case_ids: list[str], classes):
        cases = cases_of(manifest, case_ids)
        if not cases:
            raise InputError(f"{cache_dir}: none of the checkpoint's training cases are in this cache")
        groups = classes if isinstance(classes, dict) else {c: (c,) for c in classes}
        self.mean_occupancy, self.extent = {}, {}
        sums, extents = {}, {c: [[], [], []] for c in groups}
        # cases of other grid sizes are averaged centre to centre on the most common grid
        shapes = [tuple(c["shape_ijk"]) for c in cases]
        self.shape = max(set(shapes), key=shapes.count)
        for case in cases:
            sdf = case_sdf(cache_dir, case)
            for c, group in groups.items():
                occ = np.any([np.asarray(sdf[g - 1]) < 0 for g in group], axis=0)
                sums[c] = sums.get(c, 0) + centred_on(occ, self.shape).astype(np.float64)
                if occ.any():
                    for axis, span in enumerate(bounding_box(occ, margin=0)):
                        extents[c][axis].append(span.stop - span.start)
        for c in groups:
            self.mean_occupancy[c] = sums[c] / len(cases) >= 0.5
            self.extent[c] = [int(np.median(e)) if e else 1 for e in extents[c]]
        self.n_cases = len(cases)

    def mean_shape(self, cls: int, shape_ijk) -> np.ndarray:
        """The mean-shape baseline of ``cls`` on a grid of ``shape_ijk`` (centre to centre)."""
        return centred_on(self.mean_occupancy[cls], tuple(shape_ijk))

    def extrude(self, occupancy: np.ndarray, cls: int, axis: int, slice_idx: int) -> np.ndarray:
        """The extrude baseline: ``occupancy``'s plane repeated over the class's median extent along
        ``axis``, centred on it (``slice_baselines.extruded``)."""
        plane = InputPlane(axis, slice_idx, np.take(occupancy, slice_idx, axis=axis).astype(bool))
        return extruded(plane, occupancy.shape, self.extent[cls][axis])


def _protocol(options: EvalOptions, sampler, checkpoint: str, frame: TargetFrame, weights: dict | None,
              unet_identity: dict | None = None) -> dict:
    doc = {"policy": options.policy, "threshold": "logit > 0 (p > 0.5)", "sampler": dataclasses.asdict(sampler),
           "target_frame": str(frame), "input_slice_constraint": options.input_slice_constraint,
           "pose_fit_to_input_slice": options.fits_pose and frame.placed_by_pose,
           "seed": options.seed, "nsd_tolerances_mm": list(options.nsd_tolerances_mm),
           "nsd_definition": NSD_DESCRIPTIONS[options.nsd_definition],
           "checkpoint": str(checkpoint), "weights": weights, "baselines": list(options.baselines)}
    if options.num_slices > 1:  # (one slice: the protocol of before, so that its scored cases are reused)
        doc["input_slices"] = {"num_slices": options.num_slices, "slice_policy": options.slice_policy,
                               "slice_spacing_mm": options.slice_spacing_mm}
    if unet_identity:
        doc["baselines"].append(UNET_METHOD)
        doc["unet"] = unet_identity
    if options.class_unions:
        doc["class_unions"] = {k: list(v) for k, v in sorted(options.class_unions.items())}
    if options.exclude_classes:
        doc["excluded_classes"] = sorted(options.exclude_classes)
    doc["id"] = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return doc


def evaluate(checkpoint: str | Path, data_root: str | Path, output_dir: str | Path, options: EvalOptions,
             device: str = "cpu", log=lambda m: print(m, file=sys.stderr), case_visuals=None) -> dict:
    """Evaluate a training checkpoint (its model, settings and training cache) on a test cache;
    ``case_visuals``: as ``evaluate_model``'s."""
    trained = TrainedModel.load(checkpoint, device)
    # the weights themselves, not the file's path, decide whether scored cases can be reused: a run
    # retrained into the same best.pt is scored anew
    return evaluate_model(trained.model, trained.config, str(checkpoint), data_root, output_dir, options, device, log,
                          weights=trained.weights, case_visuals=case_visuals)


def evaluate_model(model, cfg: dict, source: str, data_root: str | Path, output_dir: str | Path, options: EvalOptions,
                   device: str = "cpu", log=lambda m: print(m, file=sys.stderr), weights: dict | None = None,
                   case_visuals=None) -> dict:
    """Evaluate ``model`` (eval mode, on ``device``) as configured by ``cfg`` (a resolved training
    config: target frame, crop size, validation sampler, training cache and split for the
    baselines); ``source`` names it in the protocol (a checkpoint's path, or a base's folder) and
    ``weights`` identifies its weights there (cases scored with other weights are scored again).
    ``case_visuals(data_root, case, viz_dir, axis, logits, slices, class_names, records)``, when given,
    writes a case's figures from each class's logits reconstructed from its slice along ``axis`` (and
    its further input slices: ``slices``: class -> [(axis, index), ...], that slice first); a case
    scored before without its figure is scored again."""
    from tqdm import tqdm

    data_root, output_dir = Path(data_root), Path(output_dir)
    manifest = load_manifest(data_root)
    run = RunSettings.from_config(cfg, legacy=True)
    sampler = sampler_settings(model.cfg.sampler, run.validation, options.steps, options.guidance,
                               options.samples)
    frame = target_frame(run.data.target_frame)
    unet = None
    if options.unet_checkpoint:
        from ..model.unet_baseline import load_unet_baseline

        unet = load_unet_baseline(options.unet_checkpoint, device)
    protocol = _protocol(options, sampler, source, frame, weights, unet.identity() if unet else None)

    train_cache = Path(options.train_cache or run.data.slice_cache_dir)
    if not (train_cache / "manifest.json").is_file():
        raise InputError(f"{train_cache}: the training cache is needed for the baselines (mean shape, extent); "
                         f"pass --train_cache")
    train_manifest = load_manifest(train_cache)
    names = manifest["class_names"]
    groups = training_classes_of(names, train_manifest["class_names"], options.class_unions, data_root,
                                 tuple(options.exclude_classes))
    train_ids, _ = split_cases(case_ids_of(train_manifest), run.data.val_fraction,
                               run.seed)
    leakage = leakage_warning(manifest, train_manifest)
    warnings = ([leakage] if leakage else []) + unseen_class_warnings(groups, names, train_manifest, train_ids)
    if unet is not None and not unet.training.get("completed", True):
        warnings.append(f"the U-Net baseline {options.unet_checkpoint} is an interrupted training "
                        f"({unet.training.get('steps')} of {unet.training.get('planned_steps')} steps): run its "
                        f"train-unet command again to finish it")
    for warning in warnings:
        log(f"WARNING: {warning}")
    priors = TrainingPriors(train_cache, train_manifest, train_ids, groups)
    log(f"baselines from {priors.n_cases} training cases in {train_cache}")

    cases = manifest["cases"][: options.max_cases] if options.max_cases else manifest["cases"]
    axes = manifest["options"]["axes"]
    crop = run.data.preprocess_crop_size
    cases_dir = output_dir / CASES_DIR
    cases_dir.mkdir(parents=True, exist_ok=True)
    records = []
    todo = []
    viz_dir = output_dir / VIZ_DIR
    viz_axis = 2 if 2 in axes else axes[-1]  # figures show the reconstructions from axial slices when cached
    for case in cases:
        done_path = case_record_path(output_dir, case["case_id"])
        figure_missing = case_visuals is not None and not case_figure_path(viz_dir, case["case_id"]).is_file()
        if done_path.is_file() and not figure_missing:
            done = json.loads(done_path.read_text())
            if done.get("protocol_id") == protocol["id"]:
                records += done["records"]
                continue
        todo.append(case)
    if len(todo) < len(cases):
        done = len(cases) - len(todo)
        log(f"{done} case{'s' * (done != 1)} already scored with this protocol (delete {cases_dir} to redo)")
    for case in tqdm(todo, desc="evaluate", unit="case"):
        chosen = [(case["case_id"], entry, cls) for entry, cls in choose_slices(case, axes, options.policy)
                  if cls in groups]  # excluded classes are not scored
        dataset = SliceClassDataset(data_root, manifest, [case["case_id"]], crop, min_pixels=1, seed=options.seed,
                                    frame=frame, cube_resolution=model.cfg.occupancy_resolution,
                                    cube_margin=run.data.cube_margin, samples=chosen,
                                    num_slices=(options.num_slices,), slice_policy=options.slice_policy,
                                    slice_spacing_mm=options.slice_spacing_mm,
                                    extra_slice_streams=run.data.extra_slice_streams)
        loader = DataLoader(dataset, batch_size=options.batch_size, shuffle=False, collate_fn=collate_samples)
        spacing = case_spacing(case)
        grid = case_grid(case)
        points = frame.grid_points(grid.shape, grid.affine, device)
        case_records = []
        viz_logits, viz_slices = {}, {}
        position = 0
        for batch in loader:
            inputs = {k: v.to(device) for k, v in {**condition_of(batch), "pointmap_shift": batch["pointmap_shift"],
                                                  "pointmap_scale": batch["pointmap_scale"]}.items()}
            # each sample's input slices: their planes of the true occupancy (the slices are given)
            given = InputSlices.from_batch(batch, lambda b, a, i: batch["occupancy"][b, 0].select(a, i))
            with torch.no_grad():
                logits = reconstruct_on_grid(model, inputs, frame, points, seed=options.seed, sampler=sampler,
                                             input_slices=given if options.fits_pose else None).logits
                if options.input_slice_constraint:
                    logits = impose_input_slices(logits, given)
            unet_logits = unet_predictions(unet, data_root, case, dataset.samples[position:position + len(given)],
                                           groups) if unet else None
            for b in range(logits.shape[0]):
                _, entry, cls = dataset.samples[position]
                position += 1
                truth = batch["occupancy"][b, 0].numpy() > 0.5
                model_logits = logits[b].float().cpu().numpy()
                window = dataset.windows.get(case["case_id"])  # the frame's, if it sees the case through one
                truth = frame.to_case_grid(truth, window, False)
                model_logits = frame.to_case_grid(model_logits, window, -SLICE_LOGIT)
                # the input slices on the case's grid (a windowed frame's batch has the first on its window)
                planes = [[int(entry["axis"]), int(entry["slice_idx"])]] + given[b].planes()[1:]
                if case_visuals is not None and entry["axis"] == viz_axis:
                    viz_logits[cls] = model_logits
                    viz_slices[cls] = [tuple(plane) for plane in planes]
                predictions = {"model": model_logits > 0, "mean_shape": priors.mean_shape(cls, truth.shape),
                               **slice_baselines(priors, truth, cls, planes, options, spacing)}
                if unet_logits is not None:
                    predictions[UNET_METHOD] = unet_logits[b] > 0
                for method, pred in predictions.items():
                    case_records.append({"case_id": case["case_id"], "class_id": cls, "class_name": names[str(cls)],
                                         "axis": entry["axis"], "slice_idx": entry["slice_idx"],
                                         "input_slices": planes, "method": method,
                                         **segmentation_metrics(pred, truth, spacing, options.nsd_tolerances_mm,
                                                              options.nsd_definition)})
        if case_visuals is not None and viz_logits:
            case_visuals(data_root, case, viz_dir, viz_axis, viz_logits, viz_slices, names, case_records)
        atomic_write_json(case_record_path(output_dir, case["case_id"]), {"protocol_id": protocol["id"],
                                                                          "records": case_records})
        records += case_records
    return write_reports(records, output_dir, protocol, names, options, warnings)


def slice_baselines(priors: TrainingPriors, truth: np.ndarray, cls: int, slices: list, options: EvalOptions,
                    spacing_mm) -> dict[str, np.ndarray]:
    """The baselines that use the input slices (``slices``: [axis, index] of each on the case's grid,
    the first the primary one; their planes of ``truth``, the case-grid occupancy): one slice,
    ``extrude``; several, the ``visual_hull`` (``extrude`` is its one-slice case) and, for parallel
    slices, ``interpolation`` (shape-based, of their signed distances)."""
    (axis, index), *_ = slices
    if options.num_slices == 1:
        return {"extrude": priors.extrude(truth, cls, axis, index)}
    planes = [InputPlane(a, i, np.take(truth, i, axis=a).astype(bool)) for a, i in slices]
    out = {"visual_hull": visual_hull(planes, truth.shape, priors.extent[cls])}
    if "interpolation" in options.baselines:
        out["interpolation"] = shape_based_interpolation(planes, truth.shape, spacing_mm, priors.extent[cls][axis])
    return out


def training_classes_of(names: dict, train_names: dict, unions: dict | None, data_root,
                        excluded: tuple[str, ...] = ()) -> dict[int, tuple[int, ...]]:
    """{test class: the training classes it is} matched by name (one each), or by ``unions`` (name ->
    training labels) for a class the training did not have; classes named in ``excluded`` are left out
    (not scored). ``InputError`` naming the classes that are none of these, and a union or an
    exclusion naming no test class."""
    by_name = {name: int(value) for value, name in train_names.items()}
    unions = unions or {}
    stray = sorted((set(unions) | set(excluded)) - set(names.values()))
    if stray:
        raise InputError(f"{data_root}: {{class_unions}}/{{exclude_classes}} name classes {stray} that the test cache "
                         f"does not have (it has {sorted(names.values())})")
    groups, unknown = {}, []
    for value, name in sorted(names.items(), key=lambda kv: int(kv[0])):
        if name in excluded:
            continue
        if name in unions:
            missing = [c for c in unions[name] if str(c) not in train_names]
            if missing:
                raise InputError(f"class union {name}: training has no classes {missing} (it has {train_names})")
            groups[int(value)] = tuple(int(c) for c in unions[name])
        elif name in by_name:
            groups[int(value)] = (by_name[name],)
        else:
            unknown.append(name)
    if unknown:
        raise InputError(f"{data_root}: classes {unknown} are not training classes ({train_names}): leave one out "
                         f"({{exclude_classes}} {unknown[0]}), or, when it is the union of training classes, name "
                         f"them ({{class_unions}} {unknown[0]}=<training label values>)")
    if not groups:
        raise InputError(f"{data_root}: every class is excluded: nothing to score")
    return groups


def unseen_class_warnings(groups: dict, names: dict, train_manifest: dict, train_ids: list[str]) -> list[str]:
    """One warning per scored class that no training case has (its training classes have no voxels
    there): the model never saw it, the U-Net never had its input, the mean shape is empty."""
    wanted = set(train_ids)
    voxels: dict[int, int] = {}
    for case in cases_of(train_manifest, wanted):
        for value, count in case.get("class_voxel_counts", {}).items():
            voxels[int(value)] = voxels.get(int(value), 0) + int(count)
    return [f"class {names[str(c)]}: none of the {len(wanted)} training cases has it (training classes "
            f"{list(group)}): the model and the U-Net never saw it and the mean_shape baseline is empty"
            for c, group in sorted(groups.items()) if not any(voxels.get(g, 0) for g in group)]


def unet_predictions(unet, data_root: Path, case: dict, samples: list, groups: dict) -> np.ndarray:
    """The U-Net baseline's logits (B, I, J, K) on the case's grid for ``samples`` (case id, slice entry,
    class): each from that slice's image and mask, with the class's training classes' inputs on."""
    from ..model.unet_baseline import cache_sample_input

    sdf = case_sdf(data_root, case)  # once for the batch's samples
    inputs = np.stack([cache_sample_input(data_root, case, entry, cls, unet.num_classes, class_ids=groups[cls], sdf=sdf)
                       for _, entry, cls in samples])
    with torch.no_grad():
        return unet.predict_logits(torch.from_numpy(inputs).to(unet.device)).float().cpu().numpy()


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def json_safe(obj):
    """Strict JSON: non-finite floats become the strings "nan", "inf", "-inf"."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if np.isfinite(value) else ("nan" if np.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def leakage_warning(test_manifest: dict, train_manifest: dict) -> str | None:
    """A warning when test cases are cases of the training cache (trained on, or used to choose
    best.pt), matched by content (``case_fingerprint``), not by id; None otherwise."""
    seen = {case_fingerprint(c) for c in train_manifest["cases"]}
    overlap = [c["case_id"] for c in test_manifest["cases"] if case_fingerprint(c) in seen]
    if not overlap:
        return None
    return (f"{len(overlap)} of {len(test_manifest['cases'])} test cases are cases of the training cache "
            f"({', '.join(overlap[:5])}{', ...' if len(overlap) > 5 else ''}): the model and the mean_shape "
            f"baseline have seen them, so these scores measure memorisation, not generalisation")


def write_reports(records: list[dict], output_dir: Path, protocol: dict, names: dict, options: EvalOptions,
                  warnings: list[str] | None = None) -> dict:
    metric_names = [m.key for m in metric_table(options.nsd_tolerances_mm)]
    summary = {}
    for method in ("model", *protocol.get("baselines", METHODS[1:])):
        rows = [r for r in records if r["method"] == method]
        per_class = {names[str(c)]: {m: summarize([r[m] for r in rows if r["class_id"] == c]) for m in metric_names}
                     for c in sorted({r["class_id"] for r in rows})}
        summary[method] = {"overall": {m: summarize([r[m] for r in rows]) for m in metric_names}, "per_class": per_class}
    document = {"protocol": protocol, "versions": {"sam3d_med": __version__, "torch": torch.__version__,
                                                   "monai (reference for the metrics' tests)": _installed("monai")},
                "empty_mask_convention": "both empty: NaN; one empty: dice/nsd 0, hd95/chamfer inf; summaries leave NaN out "
                                         "(counted) and keep inf in (a failure: one makes the mean inf)",
                "warnings": list(warnings or []), "summary": summary, "records": records}
    atomic_write_json(output_dir / METRICS_JSON, json_safe(document))
    buffer = io.StringIO()
    several = options.num_slices > 1  # the slices used: "axis:index" of each, ";" between them
    fields = ["case_id", "class_id", "class_name", "axis", "slice_idx"] + ["input_slices"] * several + ["method"] \
        + metric_names
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**r, "input_slices": ";".join(f"{a}:{i}" for a, i in r.get("input_slices", []))} for r in records)
    atomic_write_text(output_dir / METRICS_CSV, buffer.getvalue())
    return document


def distance_cell(stats: dict) -> str:
    """A distance summary as the table shows it: the median in mm over every structure, failures
    (inf: a prediction or truth was empty) included, and how many were inf, as metrics.json counts
    them; never a bare "nan"."""
    if stats["count"] == stats["nan"]:
        return "no values"
    if math.isinf(stats["median"]):
        return f"inf ({stats['inf']} of {stats['count'] - stats['nan']})"
    return f"{stats['median']:.1f} mm" + (f" ({stats['inf']} inf)" if stats["inf"] else "")


def summary_table(document: dict) -> str:
    """Dice mean and HD95 median per class, model beside the baselines (inf counts where there are)."""
    per_method = document["summary"]
    methods = list(per_method)
    shown = [m for m in metric_table(()) if m.console]  # the table's console metrics (no NSD among them)
    width = max(17, *(1 + len(f"{method} {m.column}") for method in methods for m in shown))
    lines = [f"{'class':<18}" + "".join(f"{method + ' ' + m.column:>{width}}" for method in methods for m in shown)]
    classes = list(per_method["model"]["per_class"])
    for name in classes + ["(all)"]:
        cells = []
        for method in methods:
            stats = per_method[method]["overall"] if name == "(all)" else per_method[method]["per_class"][name]
            cells += [f"{distance_cell(stats[m.key]):>{width}}" if m.unit == "mm"
                      else f"{stats[m.key][m.statistic]:>{width}.3f}" for m in shown]
        lines.append(f"{name:<18}" + "".join(cells))
    return "\n".join(lines)
