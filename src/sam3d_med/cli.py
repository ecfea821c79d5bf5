"""`sam3d-med <command>`: the command line. Each command is a thin shell over the package API.

Errors the user can act on (``Sam3dMedError``) are printed as one line, ``error: ...``, with exit
status 1; usage errors exit with 2 (argparse).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import Sam3dMedError


def _add_phantom(sub):
    p = sub.add_parser("phantom", help="write SYNTHETIC heart-phantom cases in the TotalSegmentator layout")
    p.add_argument("--out", required=True, help="output folder (sNNNN/sNNNN-image.nii.gz, sNNNN-label.nii.gz)")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first_index", type=int, default=1, help="number of the first case (s0001)")
    p.add_argument("--orientation", default="LAS", help="array axis codes of the written files, e.g. LAS, RAS, LPS, PIR")
    p.add_argument("--oblique_deg", type=float, default=0.0, help="rotate the grid about world z (oblique acquisition)")
    p.add_argument("--template", action="append", default=None, metavar="LABELS.nii.gz",
                   help="anatomy-based phantom: deform this real label map (values 0 and the tutorial's 1..5; "
                        "repeat for several, used in turn) instead of building ellipsoids")
    p.add_argument("--deformation_mm", type=float, default=None,
                   help="with --template: RMS amplitude of the random smooth deformation in mm (default 4.0)")
    p.add_argument("--smoothness_mm", type=float, default=None,
                   help="with --template: correlation length of the deformation in mm (default 20.0)")
    p.add_argument("--labels", default=None,
                   help="with --template: its values renumbered to the tutorial's as source:target, e.g. 1:2,2:5,3:4 "
                        "(biv-me's LV cavity, myocardium, RV cavity); values not named become background")
    p.set_defaults(func=cmd_phantom)


def cmd_phantom(args) -> int:
    if args.cases < 1:
        raise Sam3dMedError("--cases must be at least 1")
    if args.template:
        return _phantom_from_templates(args)
    if args.deformation_mm is not None or args.smoothness_mm is not None or args.labels:
        raise Sam3dMedError("--deformation_mm, --smoothness_mm and --labels apply only with --template")
    from .data.phantom import write_phantom_dataset

    folders = write_phantom_dataset(args.out, args.cases, seed=args.seed, axcodes=args.orientation,
                                    oblique_deg=args.oblique_deg, first_index=args.first_index, progress=True)
    print(f"wrote {len(folders)} synthetic cases to {args.out}")
    return 0


def _phantom_from_templates(args) -> int:
    """``phantom --template``: options and files checked before numpy/scipy load."""
    from .errors import InputError

    amplitude = 4.0 if args.deformation_mm is None else args.deformation_mm
    smoothness = 20.0 if args.smoothness_mm is None else args.smoothness_mm
    if not amplitude >= 0:
        raise Sam3dMedError(f"--deformation_mm must be 0 or more (RMS displacement in mm), got {amplitude}")
    if not smoothness > 0:
        raise Sam3dMedError(f"--smoothness_mm must be more than 0 (mm), got {smoothness}")
    if args.oblique_deg:
        raise Sam3dMedError("--oblique_deg is not available with --template (the template phantom's grid is not oblique)")
    for template in args.template:
        path = Path(template)
        if not path.is_file():
            raise InputError(f"--template {template}: file is missing")
        if not path.name.lower().endswith((".nii", ".nii.gz")):
            raise InputError(f"--template {template}: not a NIfTI label map (.nii or .nii.gz)")
    from .data.crop import parse_label_map
    from .data.template_phantom import write_template_phantom_dataset

    label_map = parse_label_map(args.labels, []) if args.labels else None
    folders = write_template_phantom_dataset(args.out, args.template, args.cases, seed=args.seed,
                                             amplitude_mm=amplitude, smoothness_mm=smoothness, axcodes=args.orientation,
                                             first_index=args.first_index, progress=True, label_map=label_map)
    print(f"wrote {len(folders)} synthetic cases deformed from {len(args.template)} template(s) to {args.out}")
    return 0


def add_preprocess_arguments(p: argparse.ArgumentParser) -> None:
    from .runtime import default_workers  # not data.preprocess: every command builds this parser

    p.add_argument("--original_nifti_dir", "--input", dest="input_dir", required=True,
                   help="folder of case folders sNNNN/ with sNNNN-image.nii.gz and sNNNN-label.nii.gz")
    p.add_argument("--out", "--out_dir", dest="out_dir", required=True, help="cache folder to write")
    p.add_argument("--classes", type=int, default=5, help="number of foreground labels (1..classes)")
    p.add_argument("--class_names", default=None,
                   help="comma-separated names of labels 1..classes (default: the input's classes.json, "
                        "else the tutorial's order 1 left_atrium ... 5 myocardium)")
    p.add_argument("--spacing", type=float, default=3.0, help="isotropic voxel size in mm to resample to")
    p.add_argument("--axes", default="0,1,2", help="array axes (RAS+ canonical) to slice along, e.g. 0,1,2 or 2")
    p.add_argument("--extract_mesh", action="store_true", help="write a surface mesh per class (meshes/*.obj)")
    p.add_argument("--compress", action="store_true", help="deflate every array of the slice .npz files (smaller, slower; the pointmap always is)")
    p.add_argument("--crop", type=int, default=None, metavar="N",
                   help="whole scans: first cut an N^3 box of --spacing voxels around labels 1..classes, as "
                        "'sam3d-med crop' does (64: the tutorial's crops)")
    p.add_argument("--workers", type=int, default=default_workers(), help="processes (cases run in parallel)")
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already finished")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")


def cmd_preprocess(args) -> int:
    from .data.preprocess import PreprocessOptions, parse_axes, resolve_class_names, run_preprocess

    if args.classes < 1:
        raise Sam3dMedError("--classes must be at least 1")
    if args.spacing <= 0:
        raise Sam3dMedError("--spacing must be positive (mm)")
    input_dir = Path(args.input_dir)
    names, source = resolve_class_names(input_dir, args.classes, args.class_names)
    _print_class_names(names, source)
    options = PreprocessOptions(classes=args.classes, spacing_mm=args.spacing, axes=parse_axes(args.axes),
                                extract_mesh=args.extract_mesh, compress=args.compress, class_names=names,
                                crop_size=args.crop)
    if args.crop is not None and args.crop < 8:
        raise Sam3dMedError("--crop must be at least 8 voxels")
    summary = run_preprocess(input_dir, args.out_dir, options, workers=args.workers,
                             overwrite=args.overwrite, progress=not args.no_progress)
    print(f"processed {len(summary.processed)}, already done {len(summary.reused)}, "
          f"skipped {len(summary.failed)}; manifest: {summary.manifest_path}")
    if summary.failed:
        print(f"error: {len(summary.failed)} cases skipped because of bad input: "
              + ", ".join(sorted(summary.failed)), file=sys.stderr)
        return 1
    return 0


def add_download_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default="facebook/sam-3d-objects", help="Hugging Face model repository")
    p.add_argument("--out", "--out_dir", dest="out_dir", default="checkpoints/hf", help="folder for the files")
    p.add_argument("--revision", default="main", help="branch, tag or commit")
    p.add_argument("--token", default=None, help="Hugging Face access token (default: HF_TOKEN or `hf auth login`)")
    p.add_argument("--endpoint", default=None, help="Hub address (default: HF_ENDPOINT or the public Hub)")
    p.add_argument("--all", dest="everything", action="store_true",
                   help="every file pipeline.yaml names (default: the sparse-structure stage only)")


def cmd_download(args) -> int:
    import re

    from . import preflight

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repo):
        raise Sam3dMedError(f"--repo {args.repo}: a Hugging Face repository is owner/name, e.g. facebook/sam-3d-objects")
    if args.endpoint and not re.match(r"https?://", args.endpoint):
        raise Sam3dMedError(f"--endpoint {args.endpoint}: give the Hub's address, e.g. https://huggingface.co")
    preflight.output_folder(args.out_dir, "--out")
    from .model.hub import download_checkpoints

    result = download_checkpoints(args.repo, args.out_dir, revision=args.revision, token=args.token,
                                  endpoint=args.endpoint, everything=args.everything)
    print(result.summary())
    return 0


def cmd_serve_release(args) -> int:
    import signal
    import threading

    from .model.hub_standin import HubStub, repository_files

    folder = Path(args.folder)
    if not folder.is_dir():
        raise Sam3dMedError(f"{folder}: release folder does not exist")
    files = repository_files(folder)
    if not files:
        raise Sam3dMedError(f"{folder}: no files to serve")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with HubStub(args.repo, files) as hub:
        if args.endpoint_file:
            from .io.atomic import atomic_write_text

            atomic_write_text(args.endpoint_file, hub.endpoint + "\n")
        print(f"serving {len(files)} files of {folder} as {args.repo} at {hub.endpoint} "
              f"(HF_ENDPOINT={hub.endpoint}); stop with Ctrl-C", flush=True)
        stop.wait()
    return 0


def cmd_model_info(args) -> int:
    import torch

    from .model.config import get_preset
    from .model.official_yaml import apply_official_yaml
    from .model.sam3d import SparseStructureModel, parameter_counts

    config = get_preset(args.preset)
    encoder = None
    if args.config_dir:
        from .model.release_files import encoder_status

        if not Path(args.config_dir).is_dir():
            raise Sam3dMedError(f"--config_dir {args.config_dir}: folder does not exist")
        encoder = encoder_status(args.config_dir)
        changed = apply_official_yaml(config, args.config_dir, with_encoder=encoder.usable)
        print(f"from {args.config_dir}: " + (", ".join(changed) if changed else "no size or sampler changes"))
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = SparseStructureModel(config, with_encoder=encoder is None or encoder.usable)
    vit, point = config.image_vit, config.point
    print(f"preset {config.name}: latent {config.flow.resolution}^3 x {config.flow.latent_channels}, "
          f"occupancy {config.occupancy_resolution}^3, flow width {config.flow.model_channels} x {config.flow.num_blocks} blocks")
    print(f"condition: Dino input {vit.input_size} px (position embedding stored for {vit.img_size} px), "
          f"{vit.tokens} tokens per image or mask stream, {point.tokens} per pointmap stream: "
          f"{config.condition_tokens:,d} condition tokens x {config.cond_dim}")
    sampler = config.sampler
    print(f"sampler: {sampler.steps} Euler steps, time rescale {sampler.rescale_t:g}, guidance {sampler.cfg_strength:g} "
          f"over model time [{sampler.cfg_interval[0]:g}, {sampler.cfg_interval[1]:g}]")
    if encoder is not None:
        print(encoder.describe() + (": flow targets from the encoder (latent_targets.source=auto)" if encoder.usable
                                    else ": flow targets from inverting the released decoder"))
    for name, count in parameter_counts(model).items():
        print(f"  {name:58s} {count:>15,d}  ({count / 1e6:,.1f} M)")
    return 0


def cmd_check_release(args) -> int:
    from .data.manifest import load_manifest
    from .model.release_files import require_encoder, require_weights_folder

    if args.cases < 0:
        raise Sam3dMedError("--cases must be 0 (all) or more")
    if args.device not in ("cpu", "cuda"):
        raise Sam3dMedError(f"--device must be cpu or cuda (got {args.device!r})")
    require_weights_folder(args.config_dir)
    require_encoder(args.config_dir)
    load_manifest(args.data_root)  # before torch: a wrong path is one line at once
    from .train.release_check import check_release, report
    from .devices import resolve_device

    device = str(resolve_device(args.device))
    result = check_release(args.config_dir, args.data_root, args.cases or None, device=device)
    print(report(result, device))
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="training checkpoint (best.pt, last.pt, epoch_N.pt)")
    p.add_argument("--data_root", required=True, help="preprocessed test cache (manifest.json)")
    p.add_argument("--output_dir", default="results/evaluation")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--policy", default="max_area", help="conditioning slice per class and axis: max_area or center")
    p.add_argument("--num_slices", type=int, default=1,
                   help="input slices per reconstruction, 1..3: the --policy slice, then --slice_policy's "
                        "(the baselines use the same slices: visual hull, and interpolation for parallel slices)")
    p.add_argument("--slice_policy", default="orthogonal",
                   help="the further slices: orthogonal (largest section on each other axis), parallel "
                        "(--slice_spacing_mm apart) or random")
    p.add_argument("--slice_spacing_mm", type=float, default=15.0, help="parallel slices: their spacing (mm)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance strength (default: the checkpoint's)")
    p.add_argument("--samples", type=int, default=None, help=SAMPLES_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_cache", default=None, help="training cache for the baselines (default: the checkpoint's)")
    p.add_argument("--max_cases", type=int, default=None)
    p.add_argument("--nsd_definition", choices=["surface_area", "boundary_voxels"], default="surface_area",
                   help="Surface Dice: surface_area (the reference definition, as published values) or "
                        "boundary_voxels (MONAI's default count; nearly binary at 1 mm on 3 mm voxels)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--save_viz", action="store_true", help="per-case comparison figures and surfaces in visualizations/ (for the report)")
    p.add_argument("--no_slice_constraint", action="store_true",
                   help="score the model's own prediction: its own pose and its own input plane (default: the pose is "
                        "fitted to the input slice and the plane set to the input mask, which is given, not predicted)")
    p.add_argument("--no_pose_fit", action="store_true",
                   help="keep the model's own pose (default: fitted to the input slice's mask, object frame)")
    p.add_argument("--baseline", action="append", default=[], metavar="unet=CHECKPOINT",
                   help="a further baseline beside mean_shape and extrude: unet=CHECKPOINT, a 3-D U-Net made by "
                        "sam3d-med train-unet on the training cache")
    p.add_argument("--class_union", action="append", default=[], metavar="NAME=1,2,3",
                   help="score a test class the training did not have as the union of training classes, e.g. "
                        "heart=1,2,3,4,5 (repeatable)")
    p.add_argument("--exclude_class", action="append", default=[], metavar="NAME",
                   help="leave a test class out of the scores, e.g. one no training class is (repeatable)")


def parse_eval_extras(args) -> tuple[str | None, dict[str, tuple[int, ...]]]:
    """(U-Net checkpoint or None, class unions) from ``--baseline`` and ``--class_union``; one-line errors."""
    from . import preflight

    unet = None
    for text in args.baseline:
        name, _, path = text.partition("=")
        if name != "unet" or not path:
            raise Sam3dMedError(f"--baseline {text}: give unet=CHECKPOINT (a checkpoint of sam3d-med train-unet)")
        unet = str(preflight.unet_checkpoint(path))
    given = [text.partition("=")[0].strip() for text in args.class_union]
    twice = sorted({name for name in given if given.count(name) > 1})
    if twice:
        raise Sam3dMedError(f"--class_union {', '.join(twice)}: given more than once")
    unions = {}
    for text in args.class_union:
        name, _, values = text.partition("=")
        try:
            unions[name.strip()] = tuple(int(v) for v in values.split(","))
        except ValueError:
            raise Sam3dMedError(f"--class_union {text}: give NAME=1,2,3 (training label values)") from None
        if not name.strip():
            raise Sam3dMedError(f"--class_union {text}: give NAME=1,2,3 (training label values)")
    both = sorted(set(unions) & set(args.exclude_class))
    if both:
        raise Sam3dMedError(f"{', '.join(both)}: given both --class_union and --exclude_class")
    return unet, unions


def cmd_eval(args) -> int:
    from . import preflight
    from .data.manifest import load_manifest

    check_inference_arguments(args)
    unet_checkpoint, class_unions = parse_eval_extras(args)
    preflight.at_least(args.batch_size, 1, "--batch_size", optional=False)
    preflight.at_least(args.max_cases, 1, "--max_cases")
    if args.policy not in ("max_area", "center"):
        raise Sam3dMedError(f"--policy {args.policy}: must be max_area or center")
    load_manifest(args.data_root)
    if args.train_cache:
        load_manifest(args.train_cache)
    preflight.output_folder(args.output_dir, "--output_dir")
    from .eval.runner import EvalOptions, evaluate, summary_table
    from .devices import resolve_device

    device = resolve_device(args.device)
    options = EvalOptions(policy=args.policy, steps=args.steps, guidance=args.guidance, samples=args.samples,
                          seed=args.seed, batch_size=args.batch_size, train_cache=args.train_cache,
                          max_cases=args.max_cases,
                          input_slice_constraint=not args.no_slice_constraint, pose_fit=not args.no_pose_fit,
                          nsd_definition=args.nsd_definition, unet_checkpoint=unet_checkpoint,
                          class_unions=class_unions or None, exclude_classes=tuple(args.exclude_class),
                          num_slices=args.num_slices, slice_policy=args.slice_policy,
                          slice_spacing_mm=args.slice_spacing_mm)
    case_visuals = None
    if args.save_viz:  # the figures are viz's: handed to the evaluation, which does not draw
        from .viz.comparison import write_evaluation_case_visuals as case_visuals
    document = evaluate(args.checkpoint, args.data_root, args.output_dir, options, device=str(device),
                        case_visuals=case_visuals)
    print(summary_table(document))
    for warning in document["warnings"]:  # again after the table: it changes how the table reads
        print(f"WARNING: {warning}", file=sys.stderr)
    print(f"metrics: {args.output_dir}/metrics.json, {args.output_dir}/metrics.csv"
          + (f"; figures and surfaces: {args.output_dir}/visualizations (report: sam3d-med report {args.output_dir})"
             if args.save_viz else ""))
    return 0


def add_train_unet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train_cache", required=True, help="preprocessed training cache (manifest.json), as the LoRA run's")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (constant)")
    p.add_argument("--seed", type=int, default=0, help="split, weights and sample draws (the LoRA run's seed: same split)")
    p.add_argument("--val_fraction", type=float, default=0.1,
                   help="cases held out as in the LoRA run: give its data.val_fraction (configs/train.yaml: 0.1)")
    p.add_argument("--side", type=int, default=64, help="the network's cube in voxels; other grids are centre-cropped/padded")
    p.add_argument("--save_every", type=int, default=100,
                   help="also save the checkpoint every N steps (the same command again resumes from it)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")


def cmd_train_unet(args) -> int:
    from . import preflight
    from .data.manifest import load_manifest

    preflight.at_least(args.steps, 1, "--steps", optional=False)
    preflight.at_least(args.batch_size, 1, "--batch_size", optional=False)
    if args.side < 8 or args.side % 8:
        raise Sam3dMedError(f"--side must be a positive multiple of 8 (the U-Net halves it 3 times), got {args.side}")
    preflight.at_least(args.save_every, 1, "--save_every", optional=False)
    preflight.positive(args.lr, "--lr", optional=False)
    if not 0 <= args.val_fraction < 1:
        raise Sam3dMedError(f"--val_fraction must be in [0, 1) (got {args.val_fraction})")
    preflight.device_option(args.device)
    if Path(args.out).suffix != ".pt":
        raise Sam3dMedError(f"--out {args.out}: give a .pt file name")
    preflight.output_path(args.out, "--out")
    load_manifest(args.train_cache)  # before torch: a wrong path is one line at once
    from .train.unet_baseline import train_unet

    try:
        train_unet(args.train_cache, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed, val_fraction=args.val_fraction, device=args.device, side=args.side,
                   save_every=args.save_every, progress=not args.no_progress,
                   log=lambda m: print(m, file=sys.stderr))
    except KeyboardInterrupt:  # train_unet has said where the model is and how to resume
        return 130
    print(f"U-Net baseline: {args.out}")
    return 0


def add_inference_arguments(p: argparse.ArgumentParser, checkpoint_flags=("--checkpoint",)) -> None:
    """What every command that samples reconstructions from a training checkpoint takes."""
    p.add_argument(*checkpoint_flags, dest="checkpoint", required=True,
                   help="training checkpoint (best.pt, last.pt, epoch_N.pt; holds the LoRA adapters)")
    p.add_argument("--spacing", type=float, default=3.0, help="the model's voxel size in mm (as preprocessed)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance strength (default: the checkpoint's)")
    p.add_argument("--samples", type=int, default=None, help=SAMPLES_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no_slice_constraint", action="store_true",
                   help="keep the model's own prediction: its own pose and its own input plane (default: the pose is "
                        "fitted to the input slice and the plane set to the input mask, which is given, not predicted)")
    p.add_argument("--no_pose_fit", action="store_true",
                   help="keep the model's own pose (default: fitted to the input slice's mask, object frame)")


def check_inference_arguments(args) -> None:
    """What every sampling command checks before torch loads: checkpoint file, device, sampler numbers."""
    from . import preflight

    preflight.training_checkpoint(args.checkpoint, "--checkpoint")
    preflight.device_option(args.device)
    preflight.positive(getattr(args, "spacing", None), "--spacing")
    preflight.at_least(args.steps, 1, "--steps")
    preflight.at_least(args.samples, 1, "--samples")
    if args.guidance is not None and args.guidance < 0:
        raise Sam3dMedError(f"--guidance must be 0 or more (got {args.guidance})")


def load_for_inference(args, several_slices: bool = False) -> dict:
    """Model, sampler (the checkpoint's validation settings unless overridden), crop size, device; with
    ``several_slices`` also the condition streams of further input slices the model was trained with."""
    from .devices import resolve_device
    from .model.trained import TrainedModel
    from .settings import RunSettings

    trained = TrainedModel.load(args.checkpoint, resolve_device(args.device), args.steps, args.guidance, args.samples)
    out = {"model": trained.model, "sampler": trained.sampler, "crop_size": trained.crop_size, "seed": args.seed,
           "device": trained.device, "frame": trained.frame, "input_slice": not args.no_slice_constraint,
           "pose_fit": not args.no_pose_fit}  # used only with the input slice (reconstruct_logits)
    if several_slices:
        out["extra_slice_streams"] = RunSettings.from_config(trained.config, legacy=True).data.extra_slice_streams
    return out


def input_slice_options(args, with_flags: bool = False):
    """(axis, index) of each input slice: --axis/--slice_idx, then every --slice AXIS:INDEX; with
    ``with_flags`` also how each was written (for errors that name it)."""
    slices, flags = [], []
    if args.axis is not None or args.slice_idx is not None:
        if args.axis is None or args.slice_idx is None:
            raise Sam3dMedError("--axis and --slice_idx go together (or give --slice AXIS:INDEX)")
        slices.append((args.axis, args.slice_idx))
        flags.append(None)
    for text in args.slices:
        try:
            axis, index = (int(part) for part in text.split(":"))
        except ValueError:
            raise Sam3dMedError(f"--slice {text}: give AXIS:INDEX, e.g. 2:31 (the stored array axis and slice)") from None
        slices.append((axis, index))
        flags.append(f"--slice {text}")
    if not slices:
        raise Sam3dMedError("give the input slice: --axis A --slice_idx I, or --slice AXIS:INDEX (repeated for several)")
    if len(slices) > 3 or len(set(slices)) < len(slices):
        raise Sam3dMedError(f"--slice: 1 to 3 different input slices (got {', '.join(f'{a}:{i}' for a, i in slices)})")
    return (slices, flags) if with_flags else slices


def cmd_predict(args) -> int:
    from . import preflight

    check_inference_arguments(args)
    slices, flags = input_slice_options(args, with_flags=True)
    shape = preflight.nifti_shape(args.image, "--image", "image")
    for (axis, index), flag in zip(slices, flags):
        preflight.slice_option(shape, axis, index, given=flag)
    if len(slices) > 1 and args.label is None:
        raise Sam3dMedError("several input slices need --label with --class (each slice's mask is read from the labels)")
    if args.label is not None:
        if args.class_id is None:
            raise Sam3dMedError("--label needs --class (the label value to reconstruct)")
        preflight.nifti_shape(args.label, "--label", "label")
        preflight.label_on_image_grid(args.image, args.label)
        # before the model loads: a further slice without the class is one line at once
        preflight.label_class(args.label, args.class_id, args.image, slices if len(slices) > 1 else (), flags)
    elif args.mask is not None:
        preflight.existing_file(args.mask, "--mask", "mask PNG")
    else:
        raise Sam3dMedError("give the structure's mask: --mask slice-mask.png, or --label case-label.nii.gz --class N")
    for flag, path in (("--out", args.out), ("--probabilities", args.probabilities), ("--mesh", args.mesh)):
        if path:
            preflight.output_path(path, flag)
    from .eval.predict import predict_volume

    written = predict_volume(
        image_path=args.image, axis=slices[0][0], slice_idx=slices[0][1], out_path=args.out, mask_png=args.mask,
        label_path=args.label, class_id=args.class_id, spacing_mm=args.spacing, probability_path=args.probabilities,
        mesh_path=args.mesh, further_slices=slices[1:], **load_for_inference(args, several_slices=True))
    print(f"prediction: {written['mask']} ({written['voxels']} voxels, {written['volume_ml']:.1f} ml, on the input's grid)"
          + "".join(f"; {k}: {written[k]}" for k in ("probability", "mesh") if k in written)
          + (f"; {written['removed']} removed (an earlier run's mesh: it described another prediction)"
             if "removed" in written else ""))
    if "warning" in written:
        print(f"warning: {written['warning']}", file=sys.stderr)
    return 0


def add_finetuned_arguments(p: argparse.ArgumentParser) -> None:
    add_inference_arguments(p, ("--lora_checkpoint", "--checkpoint"))
    p.add_argument("--image", required=True, help="the 2-D image (PNG)")
    p.add_argument("--mask_dir", required=True, help="folder of mask PNGs (same size as the image)")
    p.add_argument("--mask_index", type=int, default=0, help="which mask: position in the folder's sorted *.png files")
    p.add_argument("--output_dir", default="results/visualizations")
    p.add_argument("--pixel_spacing", type=float, default=None,
                   help="mm per PNG pixel (a PNG has no geometry; default: the model's voxel size, --spacing)")
    p.add_argument("--axis", type=int, default=2, help="the axis of the model's RAS+ grid the PNG is a slice along "
                                                       "(2 = axial), in display orientation as export-slice writes it "
                                                       "(anterior/superior up, the patient's right on the right)")
    p.add_argument("--png_window", default="40,400", help="level,width in HU a grey PNG was windowed with")


def add_comparison_arguments(p: argparse.ArgumentParser) -> None:
    add_inference_arguments(p)
    p.add_argument("--volume", required=True, help="the scan (NIfTI)")
    p.add_argument("--slice_idx", type=int, default=None, help=STORED_INDEX_HELP)
    p.add_argument("--axis", type=int, default=2, help=STORED_AXIS_HELP)
    p.add_argument("--slice", dest="slices", action="append", default=[], metavar="AXIS:INDEX",
                   help="an input slice (stored axis and index), repeated for several (up to 3, with --label: each "
                        "structure from every given slice it is on); the first (or --slice_idx) is the primary one")
    p.add_argument("--label", default=None, help="ground-truth labels on the scan's grid: every structure on the slice is "
                                                 "reconstructed and compared")
    p.add_argument("--mask", default=None, help="without --label: PNG mask of one structure on the slice (with --class), in "
                   "display orientation on the model's grid (as export-slice writes it)")
    p.add_argument("--class", dest="class_id", type=int, default=None, help="label value of the --mask structure")
    p.add_argument("--output", default="results/comparison.png", help="the comparison grid (meshes go beside it)")
    p.add_argument("--slices_per_axis", type=int, default=3, help="columns per axis in the grid")
    p.add_argument("--class_names", default=None, help="comma-separated names of labels 1..N (default: classes.json beside the scan, else the heart classes)")


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("eval_dir", help="evaluation folder (metrics.json; visualizations/ from --save_viz)")
    p.add_argument("--out", default=None, help="HTML file (default: <eval_dir>/report.html)")
    p.add_argument("--max_figures", type=int, default=20, help="per-case figures embedded (worst model Dice first)")
    p.add_argument("--max_3d_cases", type=int, default=3, help="cases in the interactive 3-D view")
    p.add_argument("--max_faces", type=int, default=20_000,
                   help="surfaces with more faces are simplified in the 3-D view (keeps the file small)")


def _class_names(text: str | None, scan_path: str) -> tuple[dict[int, str], str]:
    """(names, where from): --class_names, else the classes.json beside the scan or one folder up,
    else the heart order."""
    from .data.classes import CLASSES_FILE, find_class_names

    folder = next((f for f in Path(scan_path).resolve().parents[:2] if (f / CLASSES_FILE).is_file()), Path(scan_path).parent)
    return find_class_names(folder, text)


def _print_class_names(names: dict[int, str], source: str) -> None:
    print(f"class names ({source}): " + ", ".join(f"{k}={v}" for k, v in sorted(names.items())), file=sys.stderr)


def _mask_file(mask_dir: str, index: int) -> Path:
    folder = Path(mask_dir)
    if not folder.is_dir():
        raise Sam3dMedError(f"{folder}: mask folder does not exist")
    masks = sorted(folder.glob("*.png"))
    if not masks:
        raise Sam3dMedError(f"{folder}: no .png masks in the folder")
    if not 0 <= index < len(masks):
        raise Sam3dMedError(f"--mask_index {index}: the folder holds {len(masks)} masks (0..{len(masks) - 1})")
    return masks[index]


def _window(text: str) -> tuple[float, float]:
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise Sam3dMedError(f"--png_window must be level,width in HU (got {text!r})") from None
    if width <= 0:
        raise Sam3dMedError("--png_window width must be positive")
    return level, width


def cmd_visualize_finetuned(args) -> int:
    from . import preflight

    check_inference_arguments(args)
    preflight.existing_file(args.image, "--image", "image PNG")
    mask = _mask_file(args.mask_dir, args.mask_index)
    window = _window(args.png_window)
    preflight.positive(args.pixel_spacing, "--pixel_spacing")
    if args.axis not in (0, 1, 2):
        raise Sam3dMedError(f"--axis {args.axis}: must be 0, 1 or 2")
    preflight.output_folder(args.output_dir, "--output_dir")
    from .viz.finetuned import reconstruct_from_png

    summary = reconstruct_from_png(image_png=args.image, mask_png=mask, out_dir=args.output_dir,
                                   pixel_spacing_mm=args.pixel_spacing, spacing_mm=args.spacing, axis=args.axis,
                                   png_window=window, **load_for_inference(args))
    print(summary["assumption"])
    print(f"mask {mask.name}: {summary['predicted_voxels']} voxels ({summary['predicted_volume_ml']:.1f} ml) predicted")
    for kind, path in summary["files"].items():
        print(f"  {kind:8s} {path}")
    return 0


def cmd_visualize_comparison(args) -> int:
    from . import preflight

    check_inference_arguments(args)
    if args.slice_idx is None:
        args.axis = None  # --axis (default 2) goes with --slice_idx
    slices, flags = input_slice_options(args, with_flags=True)
    if len(slices) > 1 and args.mask is not None and args.label is None:
        raise Sam3dMedError("several input slices need --label (each structure's masks are read from the labels)")
    shape = preflight.nifti_shape(args.volume, "--volume", "scan")
    for (axis, index), flag in zip(slices, flags):
        preflight.slice_option(shape, axis, index, given=flag)
    if args.label is None and args.mask is None:
        # a case in the tutorial's layout holds its label beside the image: the ground truth to compare with
        args.label = preflight.label_beside(args.volume)
        if args.label is None:
            raise Sam3dMedError("give the structures' masks: --label case-label.nii.gz (every structure on the slice), "
                                "or --mask slice-mask.png --class N (one structure); no sNNNN-label.nii.gz lies beside "
                                f"{args.volume}")
        print(f"labels: {args.label} (beside the scan; --label or --mask to choose another)", file=sys.stderr)
    if args.label is not None:
        preflight.nifti_shape(args.label, "--label", "label")
        preflight.label_on_image_grid(args.volume, args.label)
    else:
        preflight.existing_file(args.mask, "--mask", "mask PNG")
        if args.class_id is None:
            raise Sam3dMedError("--mask needs --class (the label value of the structure)")
    preflight.at_least(args.slices_per_axis, 1, "--slices_per_axis", optional=False)
    preflight.output_path(args.output, "--output")
    from .viz.comparison import compare_on_volume

    inference = load_for_inference(args, several_slices=True)
    names, source = _class_names(args.class_names, args.volume)
    written = compare_on_volume(image_path=args.volume, axis=slices[0][0], slice_idx=slices[0][1],
                                output_png=args.output, class_names=names,
                                label_path=args.label, mask_png=args.mask, class_id=args.class_id,
                                spacing_mm=args.spacing, per_axis=args.slices_per_axis, further_slices=slices[1:],
                                **inference)
    _print_class_names(names, source)
    print(f"comparison grid: {written['figure']}")
    for c, paths in written["meshes"].items():
        score = f" (Dice {written['scores'][c]['dice']:.3f})" if c in written["scores"] else ""
        print(f"  class {c}{score}: " + ", ".join(f"{k} {v}" for k, v in paths.items() if v))
    return 0


def _add_visualize(sub) -> None:
    p = sub.add_parser("visualize", help="figures and meshes of reconstructions (tutorial step 5)")
    kinds = p.add_subparsers(dest="kind", required=True)
    q = kinds.add_parser("finetuned", help="PNG image + mask PNG -> .obj, overlay and mesh renders")
    add_finetuned_arguments(q)
    q.set_defaults(func=cmd_visualize_finetuned)
    q = kinds.add_parser("comparison", help="NIfTI scan (+ labels) -> comparison grid PNG and meshes")
    add_comparison_arguments(q)
    q.set_defaults(func=cmd_visualize_comparison)


def cmd_report(args) -> int:
    from . import preflight

    if not (Path(args.eval_dir) / "metrics.json").is_file():  # before plotly loads
        raise Sam3dMedError(f"{args.eval_dir}: no metrics.json: not an evaluation folder (run scripts/eval_medical.py "
                            f"first)")
    if args.out:
        preflight.output_path(args.out, "--out")
    preflight.at_least(args.max_figures, 0, "--max_figures", optional=False)
    preflight.at_least(args.max_3d_cases, 0, "--max_3d_cases", optional=False)
    preflight.at_least(args.max_faces, 4, "--max_faces", optional=False)
    from .viz.report import write_report

    path = write_report(args.eval_dir, args.out, max_figures=args.max_figures, max_3d_cases=args.max_3d_cases,
                        max_faces_per_surface=args.max_faces)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, works offline)")
    return 0


def cmd_crop(args) -> int:
    import numpy as np

    from .data.classes import CLASSES_FILE, DEFAULT_CLASS_NAMES, class_names_document, parse_class_names
    from .data.crop import crop_around_labels, parse_label_map
    from .data.label_sources import named_label_map
    from .io.atomic import atomic_write_json
    from .io.nifti import label_on_image_grid, load_volume, save_volume

    if args.size < 8 or args.spacing <= 0:
        raise Sam3dMedError(f"--size {args.size} --spacing {args.spacing}: need at least 8 voxels of a positive size")
    from . import preflight

    preflight.nifti_shape(args.image, "--image", "image")
    preflight.nifti_shape(args.label, "--label", "label")
    parse_label_map(args.labels, [])  # a wrong --labels before the volumes are read
    preflight.output_folder(args.out, "--out")
    image = load_volume(args.image, "image", canonical=False)
    label = label_on_image_grid(load_volume(args.label, "label", canonical=False), image, args.label)
    label_map = parse_label_map(args.labels, [int(v) for v in np.unique(label.data) if v > 0])
    crop = crop_around_labels(image, label, label_map, size=args.size, spacing_mm=args.spacing)
    case_id = args.case_id
    folder = Path(args.out) / case_id
    save_volume(folder / f"{case_id}-image.nii.gz", np.clip(np.round(crop.image_hu), -32768, 32767), crop.affine,
                dtype=np.int16)
    save_volume(folder / f"{case_id}-label.nii.gz", crop.label, crop.affine, dtype=np.uint8)
    if args.class_names:
        atomic_write_json(Path(args.out) / CLASSES_FILE, class_names_document(parse_class_names(args.class_names)))
    elif named_label_map(args.labels or "") is not None:  # a named source: the tutorial's classes, said so in the data
        atomic_write_json(Path(args.out) / CLASSES_FILE, class_names_document(DEFAULT_CLASS_NAMES))
    counts = {int(v): int(np.count_nonzero(crop.label == v)) for v in sorted(set(label_map.values()))}
    print(f"{folder}: {args.size}^3 voxels of {args.spacing:g} mm around labels {sorted(label_map)} "
          f"(extent {' x '.join(f'{e:.0f}' for e in crop.extent_mm)} mm, R x A x S); voxels per label {counts}")
    if crop.cut:
        print(f"warning: the labels extend {' x '.join(f'{e:.0f}' for e in crop.extent_mm)} mm, more than the "
              f"{args.size * args.spacing:g} mm box: they are cut at its faces (use --size)", file=sys.stderr)
    return 0


def cmd_export_slice(args) -> int:
    from . import preflight

    shape = preflight.nifti_shape(args.image, "--image", "image")
    preflight.slice_option(shape, args.axis, args.slice_idx)
    preflight.nifti_shape(args.label, "--label", "label")
    preflight.label_on_image_grid(args.image, args.label)
    preflight.output_folder(args.out, "--out")
    from .viz.finetuned import export_slice_png

    names, source = _class_names(args.class_names, args.label)
    written = export_slice_png(args.image, args.label, args.axis, args.slice_idx, args.out, names, spacing_mm=args.spacing)
    _print_class_names(names, source)
    print(f"image: {written['image']}; masks ({len(written['masks'])}, --mask_index in this order): "
          + ", ".join(p.name for p in written["masks"]))
    return 0


# One slice convention everywhere: indices of the file as stored (what ITK-SNAP and 3D Slicer show as
# voxel coordinates), whatever its orientation.
SAMPLES_HELP = ("sampled reconstructions averaged per input, mean probability (default: the checkpoint's "
                "validation.eval_samples, else 1)")
STORED_AXIS_HELP = "array axis of the slice in the NIfTI file as stored (0, 1, 2; the same in every command)"
STORED_INDEX_HELP = "slice index along --axis in the file as stored (0-based voxel index, as viewers show it)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3d-med", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_phantom(sub)
    p = sub.add_parser("preprocess", help="NIfTI cases -> per-slice cache, SDFs, meshes, manifest")
    add_preprocess_arguments(p)
    p.set_defaults(func=cmd_preprocess)
    p = sub.add_parser("model-info", help="parameter counts per module (no weights allocated)")
    p.add_argument("--preset", default="sam3d", help="sam3d (official sizes) or tiny")
    p.add_argument("--config_dir", default=None, help="folder with the official YAML files to read sizes from")
    p.set_defaults(func=cmd_model_info)
    p = sub.add_parser("check-release", help="round trips of your structures through the released SS encoder and "
                                              "decoder, as solids and as surface shells (CPU): which data.occupancy")
    p.add_argument("--config_dir", default="checkpoints/hf", help="the downloaded release (step 1's --out)")
    p.add_argument("--data_root", required=True, help="preprocessed cache (manifest.json)")
    p.add_argument("--cases", type=int, default=5, help="cases to measure (the first N of the cache; 0: all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=cmd_check_release)
    p = sub.add_parser("eval", help="evaluate a checkpoint on a test cache (Dice, HD95, Chamfer, NSD; baselines)")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("train-unet", help="train the supervised 3-D U-Net baseline (MONAI) on a training cache")
    add_train_unet_arguments(p)
    p.set_defaults(func=cmd_train_unet)
    p = sub.add_parser("predict", help="one slice + mask of a NIfTI scan -> 3-D prediction as NIfTI on the scan's grid")
    add_inference_arguments(p)
    p.add_argument("--image", required=True, help="the scan (NIfTI)")
    p.add_argument("--axis", type=int, default=None, help=STORED_AXIS_HELP)
    p.add_argument("--slice_idx", type=int, default=None, help=STORED_INDEX_HELP)
    p.add_argument("--slice", dest="slices", action="append", default=[], metavar="AXIS:INDEX",
                   help="an input slice (stored axis and index), repeated for several (up to 3, each mask read from "
                        "--label with --class); the first (or --axis/--slice_idx, when given) is the primary one")
    p.add_argument("--mask", default=None, help="PNG mask of the structure on that slice, in display orientation on the model's "
                   "grid (as export-slice writes masks/NN_<class>.png)")
    p.add_argument("--label", default=None, help="label volume on the scan's grid (with --class)")
    p.add_argument("--class", dest="class_id", type=int, default=None, help="label value of the structure")
    p.add_argument("--out", required=True, help="predicted mask, NIfTI with the scan's affine")
    p.add_argument("--probabilities", default=None, help="also write the probability map (NIfTI)")
    p.add_argument("--mesh", default=None, help="also write the surface mesh (.obj or .ply, world mm)")
    p.set_defaults(func=cmd_predict)
    _add_visualize(sub)
    p = sub.add_parser("report", help="one offline HTML report of an evaluation folder")
    add_report_arguments(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("crop", help="a TotalSegmentator-style crop (64^3 voxels of 3 mm around chosen labels) of a "
                                     "whole scan, in the tutorial's layout")
    p.add_argument("--image", required=True, help="the whole scan (NIfTI, any size, spacing, orientation)")
    p.add_argument("--label", required=True, help="its label volume on the same grid (e.g. TotalSegmentator's output)")
    p.add_argument("--out", required=True, help="data folder: OUT/CASE/CASE-image.nii.gz and CASE-label.nii.gz")
    p.add_argument("--case_id", required=True, help="case name, e.g. s0001")
    p.add_argument("--labels", default=None, help="label values to keep, e.g. 1,2,3,4,5, or renumbered source:target, "
                                                  "e.g. 51:1,52:2 (default: every label, as it is)")
    p.add_argument("--size", type=int, default=64, help="voxels per side")
    p.add_argument("--spacing", type=float, default=3.0, help="voxel size in mm")
    p.add_argument("--class_names", default=None, help="comma-separated names of the kept labels 1..N: writes "
                                                       "OUT/classes.json")
    p.set_defaults(func=cmd_crop)
    p = sub.add_parser("export-slice", help="a slice of a NIfTI scan as image.png + masks/*.png (visualize finetuned's inputs)")
    p.add_argument("--image", required=True, help="the scan (NIfTI)")
    p.add_argument("--label", required=True, help="its label volume (NIfTI, same grid)")
    p.add_argument("--axis", type=int, default=2, help=STORED_AXIS_HELP)
    p.add_argument("--slice_idx", type=int, required=True, help=STORED_INDEX_HELP)
    p.add_argument("--spacing", type=float, default=3.0, help="the model's voxel size in mm")
    p.add_argument("--class_names", default=None, help="comma-separated names of labels 1..N (default: classes.json beside the scan, else the heart classes)")
    p.add_argument("--out", required=True, help="folder for image.png and masks/")
    p.set_defaults(func=cmd_export_slice)
    p = sub.add_parser("serve-release", help="serve a release folder as a local stand-in of the Hugging Face Hub "
                                             "(the demo serves the rehearsal release to step 1's real download code)")
    p.add_argument("folder", help="the repository's files (e.g. release/rehearsal with checkpoints/ inside)")
    p.add_argument("--repo", default="facebook/sam-3d-objects", help="repository name to answer for")
    p.add_argument("--endpoint_file", default=None, help="also write the address to this file")
    p.set_defaults(func=cmd_serve_release)
    p = sub.add_parser("download", help="download the official SAM 3D Objects weights and configs")
    add_download_arguments(p)
    p.set_defaults(func=cmd_download)
    for command in sub.choices.values():
        command.set_defaults(flag_names=flag_names(command))
    return parser


# library parameters that a command's option stands for under another name
PARAMETER_FLAGS = {"label_path": "--label", "mask_png": "--mask", "pixel_spacing_mm": "--pixel_spacing",
                   "class_unions": "--class_union", "exclude_classes": "--exclude_class"}


def flag_names(command: argparse.ArgumentParser) -> dict[str, str]:
    """{library parameter: this command's option}: an error about a parameter names the option the
    user typed (``errors.Sam3dMedError.rendered``)."""
    options = {action.dest: max(action.option_strings, key=len) for action in command._actions if action.option_strings}
    return {**options, **{name: flag for name, flag in PARAMETER_FLAGS.items() if flag in options.values()}}


def run_command(func, args) -> int:
    """Run a command function; user-facing errors become one line on stderr and exit status 1, in
    the command's own option names."""
    try:
        return int(func(args) or 0)
    except Sam3dMedError as exc:
        print(f"error: {exc.rendered(getattr(args, 'flag_names', {}))}", file=sys.stderr)
        return 1
    except NotImplementedError as exc:
        print(f"error: not implemented: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished files are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output went to a reader that stopped early (`| head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def show_warnings_as_lines() -> None:
    """sam3d-med's own warnings (geometry that viewers read differently, a label reordered onto its
    image) as one ``warning:`` line on stderr each, once; other libraries' warnings as Python shows them."""
    import warnings

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        # by name: io.nifti (nibabel) is not imported by commands that read no NIfTI
        if category.__name__ == "GeometryWarning" and category.__module__ == "sam3d_med.io.nifti":
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    from .runtime import keep_freed_memory_for_reuse

    args = build_parser().parse_args(argv)
    show_warnings_as_lines()
    keep_freed_memory_for_reuse()  # CPU work (preprocessing, evaluation, sampling): see runtime.py
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
