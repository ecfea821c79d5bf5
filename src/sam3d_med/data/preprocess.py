"""Preprocessing of NIfTI cases into the per-slice cache (tutorial step 2).

For each case folder ``DIR/<id>/`` holding ``<id>-image.nii.gz`` and ``<id>-label.nii.gz``:
read both, bring them to RAS+ canonical voxel order, resample to ``spacing_mm`` isotropic when
needed, then write into ``out_dir``:

- ``<id>_sdf.npy``: float32 (C, I, J, K) signed distance in mm per foreground class 1..C
  (negative inside; ``surfaces.signed_distance_mm``), on the canonical grid.
- ``meshes/<id>_class{c}.obj`` (with ``extract_mesh``): watertight surface, world RAS+ mm.
- ``<id>.nii_axis{a}_slice{iiii}.npz`` for every slice along each requested array axis that holds
  foreground: ``image`` float32 (3,H,W) CT windows scaled to [0,1] (``CT_WINDOWS``), ``mask`` uint8
  (H,W) label values, ``pointmap`` float32 (3,H,W) world RAS+ mm of each pixel's voxel centre
  (= canonical affine @ [i,j,k,1]), ``affine`` float64 (4,4) canonical, ``slice_idx``, ``axis``,
  ``gt_sdf_path`` (relative to ``out_dir``), ``case_id``. Pixel [h, w] is voxel
  axis 0: [s,h,w], axis 1: [h,s,w], axis 2: [h,w,s] (``geometry`` module).
  The pointmap member is stored deflated (``np.load`` inflates it transparently), the others as
  they are; ``compress`` deflates them all.
- ``case_records/<id>.json``: the case's manifest entry, written last: its presence marks the case
  as finished, so an interrupted run redoes exactly the unfinished cases.
- ``manifest.json``: all finished cases of this run's input, class names, options and version.

Every file is written atomically. A case with bad input gets one error line and nothing written.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_save_npy, atomic_write_bytes, atomic_write_json, atomic_write_text, remove_stale_temporaries
from ..io.npz import npy_bytes, npz_bytes
from ..io.nifti import GeometryWarning, Volume, as_canonical, label_on_image_grid, load_volume, voxel_spacing_mm
from .classes import DEFAULT_CLASS_NAMES, find_class_names
from .geometry import canonical_resampled, take_slice, world_grid
from ..runtime import default_workers  # noqa: F401 (imported from here by callers)
from .manifest import MANIFEST_NAME, PREPROCESS_VERSION, load_manifest  # noqa: F401 (the cache's contract)
from .surfaces import mask_surface_mesh, mesh_obj_text, signed_distance_mm

RECORDS_DIR = "case_records"
MESHES_DIR = "meshes"
# (level, width) in HU for the image's three channels: soft tissue, contrast blood pool, wide.
CT_WINDOWS = ((40.0, 400.0), (150.0, 700.0), (-200.0, 2000.0))
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class PreprocessOptions:
    classes: int = 5
    spacing_mm: float = 3.0
    axes: tuple[int, ...] = (0, 1, 2)
    extract_mesh: bool = False
    compress: bool = False
    class_names: dict[int, str] = field(default_factory=lambda: dict(DEFAULT_CLASS_NAMES))
    crop_size: int | None = None  # cut a crop_size^3 box around labels 1..classes first (data.crop; whole scans)

    def fingerprint(self) -> dict:
        """What decides the cache's content: a finished case made with other values is redone."""
        return {
            "version": PREPROCESS_VERSION,
            "classes": self.classes,
            "spacing_mm": self.spacing_mm,
            "axes": list(self.axes),
            "extract_mesh": self.extract_mesh,
            "ct_windows": [list(w) for w in CT_WINDOWS],
            **({"crop_size": self.crop_size} if self.crop_size else {}),
        }


def slice_file_name(case_id: str, axis: int, slice_idx: int) -> str:
    return f"{case_id}.nii_axis{axis}_slice{slice_idx:04d}.npz"


def window_ct(image_hu: np.ndarray) -> np.ndarray:
    """HU [i,j,k] -> float32 (3, I, J, K) in [0, 1], one channel per ``CT_WINDOWS`` entry."""
    channels = []
    for level, width in CT_WINDOWS:
        lo = level - width / 2.0
        channels.append(np.clip((image_hu.astype(np.float32) - lo) / width, 0.0, 1.0))
    return np.stack(channels).astype(np.float32)


def find_case_files(case_dir: Path) -> tuple[Path | None, Path | None]:
    """(image, label) paths of a case folder ``<id>/<id>-image.nii[.gz]``; None where missing."""
    found = []
    for kind in ("image", "label"):
        path = None
        for suffix in NIFTI_SUFFIXES:
            candidate = case_dir / f"{case_dir.name}-{kind}{suffix}"
            if candidate.is_file():
                path = candidate
                break
        found.append(path)
    return found[0], found[1]


def discover_cases(input_dir: Path) -> list[Path]:
    """Every non-hidden sub-folder of ``input_dir`` is a case (sorted by name)."""
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder does not exist")
    cases = sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise InputError(f"{input_dir}: no case folders (expected sNNNN/sNNNN-image.nii.gz and sNNNN-label.nii.gz)")
    return cases


def _load_case(case_dir: Path, options: PreprocessOptions):
    """Read and check one case; returns canonical, resampled (image_hu, label, affine)."""
    image_path, label_path = find_case_files(case_dir)
    if image_path is None:
        raise InputError(f"{case_dir}: image file {case_dir.name}-image.nii.gz is missing")
    if label_path is None:
        raise InputError(f"{case_dir}: label file {case_dir.name}-label.nii.gz is missing")
    # the label onto the image's grid by the one rule of every command (io.nifti.label_on_image_grid), in
    # the files' own voxel order, then both to the same canonical order
    native = load_volume(image_path, "image", canonical=False)
    label = as_canonical(label_on_image_grid(load_volume(label_path, "label", canonical=False), native, label_path))
    image = as_canonical(native)
    values = np.unique(label.data)
    if not np.all(values == np.round(values)):
        raise InputError(f"{label_path}: label values must be integers")
    outside = [int(v) for v in values if v < 0 or v > options.classes]
    if outside:
        raise InputError(f"{label_path}: label values outside 0..{options.classes}: {outside[:8]}")
    if options.crop_size:  # a whole scan: the box around its structures, on a world-aligned grid
        from .crop import crop_around_labels

        crop = crop_around_labels(image, label, {c: c for c in range(1, options.classes + 1)}, options.crop_size,
                                  options.spacing_mm)
        return crop.image_hu, crop.label, crop.affine, image_path, label_path
    resampled = canonical_resampled(image, options.spacing_mm, order=1)
    label_data = canonical_resampled(Volume(label.data.astype(np.uint8), label.affine), options.spacing_mm, order=0).data
    return resampled.data, label_data, resampled.affine, image_path, label_path


def hounsfield_check(image: np.ndarray) -> str | None:
    """None when the intensities look like CT in Hounsfield units; else what is odd about them.

    The three CT windows (the model's image channels) assume HU. A CT of the chest holds air or lung
    (about -1000 to -500 HU) and soft tissue or blood (0 to 100 HU); MR, PET or an image normalised to
    [0, 1] or z-scores does not."""
    low, high = (float(v) for v in np.percentile(image, [1, 99]))
    if high - low < 200:
        problem = f"a range of only {high - low:.3g}"
    elif low > -300:
        problem = "no air or lung (nothing below -300)"
    elif low < -1100 or high > 4000:
        problem = "values beyond CT's range"
    else:
        return None
    return (f"intensities do not look like CT in Hounsfield units (1st..99th percentile {low:.4g}..{high:.4g}: "
            f"{problem}); the CT windows assume HU, so other images are windowed wrongly")


def _case_files(record: dict) -> list[str]:
    files = [record["sdf_path"]] + [s["file"] for s in record["slices"]]
    files += [m for m in record.get("meshes", {}).values() if m]
    return files


# Members of a slice file stored deflated (zlib level 1) unless --compress deflates all: the pointmap
# shrinks ~70x for ~20 us a slice, a third less to write and store (benchmarks/RESULTS.md).
SLICE_DEFLATED_MEMBERS = ("pointmap",)


def _write_slices(out_dir: Path, case_id: str, sdf_rel: str, image3: np.ndarray, label: np.ndarray,
                  world: np.ndarray, affine: np.ndarray, options: PreprocessOptions, written: list[Path]) -> list[dict]:
    """Write the slice files of one case (every slice with foreground along each axis); returns
    their manifest entries. ``image3``/``world`` are (3, I, J, K), ``label`` is [i, j, k]."""
    # Members equal in all of a case's slice files are encoded once.
    case_members = {"affine": npy_bytes(np.asarray(affine, dtype=np.float64)),
                    "gt_sdf_path": npy_bytes(np.str_(sdf_rel)), "case_id": npy_bytes(np.str_(case_id))}
    deflate = True if options.compress else SLICE_DEFLATED_MEMBERS
    entries = []
    for axis in options.axes:
        axis_member = npy_bytes(np.int64(axis))
        for idx in range(label.shape[axis]):
            mask = take_slice(label, axis, idx)
            if not mask.any():
                continue
            name = slice_file_name(case_id, axis, idx)
            members = {
                "image": take_slice(image3, axis, idx, leading=1),
                "mask": np.ascontiguousarray(mask, dtype=np.uint8),
                "pointmap": take_slice(world, axis, idx, leading=1),
                "slice_idx": np.int64(idx),
                "axis": axis_member,
                **case_members,
            }
            atomic_write_bytes(out_dir / name, npz_bytes(members, deflate=deflate))
            written.append(out_dir / name)
            counts = np.bincount(mask.ravel(), minlength=options.classes + 1)
            entries.append({
                "file": name, "axis": axis, "slice_idx": idx,
                "class_pixel_counts": {str(c): int(counts[c]) for c in range(1, options.classes + 1) if counts[c]},
            })
    return entries


def process_case(case_dir: str | Path, out_dir: str | Path, options: PreprocessOptions) -> dict:
    """Preprocess one case into ``out_dir``; returns its manifest record. Raises InputError."""
    case_dir, out_dir = Path(case_dir), Path(out_dir)
    case_id = case_dir.name
    inputs = input_stamps(case_dir)  # before reading: a file rewritten meanwhile is redone next time
    with warnings.catch_warnings(record=True) as caught:  # geometry warnings go with the case's record
        warnings.simplefilter("always", GeometryWarning)
        image_hu, label, affine, image_path, label_path = _load_case(case_dir, options)
    shape = label.shape
    spacing = voxel_spacing_mm(affine)
    classes = range(1, options.classes + 1)

    # Inputs are checked before anything is written, so a bad case leaves no files; slice files
    # are written from a thread while this one computes distances and meshes (file creation stalls
    # while the kernel flushes earlier writes; the stall then costs no compute time).
    image3 = window_ct(image_hu)
    world = world_grid(shape, affine, dtype=np.float32)
    sdf_rel = f"{case_id}_sdf.npy"
    record = {
        "case_id": case_id,
        "image": str(image_path),
        "label": str(label_path),
        "shape_ijk": list(shape),
        "spacing_mm": [float(s) for s in spacing],
        "affine": np.asarray(affine).tolist(),
        "axcodes": "RAS",
        "sdf_path": sdf_rel,
        "class_voxel_counts": {str(c): int(np.count_nonzero(label == c)) for c in classes},
        "meshes": {},
        "slices": [],
        "options": options.fingerprint(),
        "inputs": inputs,
    }
    record["warnings"] = [str(w.message) for w in caught if issubclass(w.category, GeometryWarning)]
    intensity_warning = hounsfield_check(image_hu)
    if intensity_warning:
        record["warnings"].append(f"{image_path}: {intensity_warning}")
    if not record["warnings"]:
        del record["warnings"]
    written: list[Path] = []
    writer = ThreadPoolExecutor(max_workers=1)
    try:
        slice_writes = writer.submit(_write_slices, out_dir, case_id, sdf_rel, image3, label, world, affine,
                                     options, written)
        sdf = np.stack([signed_distance_mm(label == c, spacing) for c in classes]).astype(np.float32)
        meshes = {c: mask_surface_mesh(sdf[c - 1], affine) for c in classes} if options.extract_mesh else {}
        record["slices"] = slice_writes.result()
        atomic_save_npy(out_dir / sdf_rel, sdf)
        written.append(out_dir / sdf_rel)
        for c, mesh in meshes.items():
            rel = None
            if mesh is not None:
                rel = f"{MESHES_DIR}/{case_id}_class{c}.obj"
                atomic_write_text(out_dir / rel, mesh_obj_text(mesh))
                written.append(out_dir / rel)
            record["meshes"][str(c)] = rel
        # One line (indent=None): the C encoder, ~10x faster than indented output for ~130 slice entries.
        atomic_write_json(out_dir / RECORDS_DIR / f"{case_id}.json", record, indent=None)
    except BaseException:
        writer.shutdown(wait=True)  # the thread may still be adding files to ``written``
        for path in written:
            path.unlink(missing_ok=True)
        raise
    finally:
        writer.shutdown(wait=True)
    return record


def input_stamps(case_dir: Path) -> dict[str, list[int]]:
    """{file name: [size in bytes, modification time in ns]} of a case's image and label files: what
    tells a case folder rewritten since it was preprocessed (cheap: no file is read)."""
    stamps = {}
    for path in find_case_files(case_dir):
        if path is not None:
            stat = path.stat()
            stamps[path.name] = [int(stat.st_size), int(stat.st_mtime_ns)]
    return stamps


def _existing_record(out_dir: Path, case_dir: Path, options: PreprocessOptions) -> dict | None:
    """The finished record of a case if it was made with the same options from the same input files
    (records from before input stamps were kept are taken as they are) and its files exist."""
    case_id = case_dir.name
    path = out_dir / RECORDS_DIR / f"{case_id}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None
    if record.get("options") != options.fingerprint():
        return None
    if "inputs" in record and record["inputs"] != input_stamps(case_dir):
        return None
    if not all((out_dir / rel).is_file() for rel in _case_files(record)):
        return None
    return record


_OUTPUT_NAME = re.compile(r"^(?P<case>.+?)(?:\.nii_axis\d_slice\d+\.npz|_sdf\.npy|_class\d+\.obj|\.json)$")


def _index_outputs(out_dir: Path) -> dict[str, list[Path]]:
    """case id -> the cache files of that case now in ``out_dir`` (one listing of each folder)."""
    index: dict[str, list[Path]] = {}
    for folder in (out_dir, out_dir / MESHES_DIR, out_dir / RECORDS_DIR):
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                match = _OUTPUT_NAME.match(entry.name)
                if match and entry.is_file() and entry.name != MANIFEST_NAME:
                    index.setdefault(match["case"], []).append(Path(entry.path))
    return index


def _worker(case_dir: str, out_dir: str, options: PreprocessOptions):
    try:
        return case_dir, process_case(case_dir, out_dir, options), None
    except InputError as exc:
        return case_dir, None, str(exc)
    except Exception as exc:  # an unexpected failure of one case must not stop the others
        return case_dir, None, f"{case_dir}: unexpected error ({type(exc).__name__}: {exc})"


@dataclass
class PreprocessSummary:
    processed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    manifest_path: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed


def _ignore_interrupts() -> None:
    """Preprocessing workers leave SIGINT to the parent (see ``run_preprocess``)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_preprocess(input_dir: str | Path, out_dir: str | Path, options: PreprocessOptions,
                   workers: int = 1, overwrite: bool = False, progress: bool = True,
                   log=lambda msg: print(msg, file=sys.stderr)) -> PreprocessSummary:
    """Preprocess every case of ``input_dir`` into ``out_dir`` and write the manifest.

    Finished cases (record present, same options, files present) are reused unless ``overwrite``.
    Bad cases are reported through ``log`` (one line each) and listed in the summary.
    """
    from tqdm import tqdm

    input_dir, out_dir = Path(input_dir), Path(out_dir)
    case_dirs = discover_cases(input_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out_dir)
    if stale:
        log(f"note: removed {stale} temporary files left by an interrupted run")

    summary = PreprocessSummary()
    records: dict[str, dict] = {}
    todo = []
    existing_files = _index_outputs(out_dir)
    for case_dir in case_dirs:
        record = None if overwrite else _existing_record(out_dir, case_dir, options)
        if record is not None:
            records[case_dir.name] = record
            summary.reused.append(case_dir.name)
        else:
            # Earlier outputs of a case being redone go first (other options may name other slices).
            for path in existing_files.get(case_dir.name, []):
                path.unlink(missing_ok=True)
            todo.append(case_dir)
    if summary.reused:
        log(f"{len(summary.reused)} cases already done (same options, same input files); use --overwrite to redo them")

    bar = tqdm(total=len(todo), desc="preprocess", unit="case", disable=not progress or not todo)

    def collect(result):
        case_dir, record, error = result
        name = Path(case_dir).name
        if error is not None:
            summary.failed[name] = error
            bar.write(f"error: {error}", file=sys.stderr)
        else:
            records[name] = record
            summary.processed.append(name)
            for warning in record.get("warnings", []):
                bar.write(f"warning: {warning}", file=sys.stderr)
        bar.update(1)

    if workers <= 1 or len(todo) <= 1:
        for case_dir in todo:
            collect(_worker(str(case_dir), str(out_dir), options))
    else:
        # Ctrl-C reaches the whole process group. The workers ignore it (a worker's KeyboardInterrupt
        # would only fail its current case and it would go on with the queue); the parent cancels
        # every case not started, lets the running ones finish (a case is done when its record is
        # written, last), and stops.
        # Cases are handed out one per free worker (the executor would otherwise queue cases ahead,
        # which can no longer be cancelled).
        n_workers = min(workers, len(todo))
        pool = ProcessPoolExecutor(max_workers=n_workers, initializer=_ignore_interrupts)
        try:
            queue, running = iter(todo), set()
            while True:
                while len(running) < n_workers and (case_dir := next(queue, None)) is not None:
                    running.add(pool.submit(_worker, str(case_dir), str(out_dir), options))
                if not running:
                    break
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    collect(future.result())
        except BaseException:
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    bar.close()

    manifest = {
        "preprocess_version": PREPROCESS_VERSION,
        "source_dir": str(input_dir.resolve()),
        "options": options.fingerprint(),
        "class_names": {str(k): v for k, v in sorted(options.class_names.items())},
        "spacing_mm": options.spacing_mm,
        "ct_windows": [list(w) for w in CT_WINDOWS],
        "slice_conventions": "pixel [h,w] of an axis-a slice s is voxel axis0:[s,h,w] axis1:[h,s,w] axis2:[h,w,s]; "
                             "pointmap = canonical affine @ [i,j,k,1] in world RAS+ mm; sdf negative inside, mm",
        "failed_cases": summary.failed,
        "cases": [records[c.name] for c in case_dirs if c.name in records],
    }
    for cls, name in sorted(options.class_names.items()):
        if manifest["cases"] and not any(c["class_voxel_counts"].get(str(cls)) for c in manifest["cases"]):
            log(f"warning: class {cls} ({name}) occurs in none of the {len(manifest['cases'])} cases: check --classes "
                f"and the label values")
    summary.manifest_path = str(out_dir / MANIFEST_NAME)
    atomic_write_json(summary.manifest_path, manifest, indent=None)
    return summary


def resolve_class_names(input_dir: Path, classes: int, names_arg: str | None) -> tuple[dict[int, str], str]:
    """Class names from --class_names, else ``input_dir/classes.json``, else the TotalSegmentator
    heart order; returns (names, where they came from). Their number must equal ``classes``."""
    names, source = find_class_names(input_dir, names_arg)
    if sorted(names) != list(range(1, classes + 1)):
        raise InputError(f"class names from {source} cover labels {sorted(names)}, but {{classes}} is {classes}")
    return names, source


def parse_axes(text: str) -> tuple[int, ...]:
    axes = tuple(sorted({int(a) for a in re.split(r"[,\s]+", text.strip()) if a}))
    if not axes or any(a not in (0, 1, 2) for a in axes):
        raise InputError("must list array axes among 0,1,2", parameter="axes", value=text)
    return axes


def case_fingerprint(case: dict) -> str:
    """What identifies a case's content in a manifest, whatever its id or folder: its grid (shape,
    affine to 1 um) and voxel count per class. Synthetic generators reuse ids (s0001...) for
    different cases; the same labels on the same grid are the same case."""
    import hashlib

    content = {"shape": list(case["shape_ijk"]), "affine": [[round(float(v), 3) for v in row] for row in case["affine"]],
               "classes": {str(k): int(v) for k, v in sorted(case["class_voxel_counts"].items())}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
