"""The official YAML files of SAM 3D Objects: read the sizes of the sparse-structure stage from them,
and write them (for the rehearsal release and the tests' stand-in, which are packaged like Meta's).

Schema (Hydra ``_target_`` documents, as the official ``inference_pipeline.py`` reads them):

- ``ss_generator.yaml``: ``module.generator.backbone`` is the flow-matching model (sampler settings,
  training time distribution) whose ``reverse_fn`` is ClassifierFreeGuidance (``p_unconditional``,
  ``strength``, ``interval``) around the MOT transformer (``reverse_fn.backbone``: widths, depth,
  heads, ``latent_mapping`` with the shape grid's resolution, ``use_fp16``);
  ``module.condition_embedder.backbone`` is the EmbedderFuser (``embedder_list`` of [module, [[input,
  position group], ...]]: two Dino wrappers with ``input_size`` and ``dino_model``, PointPatchEmbed;
  ``projection_net_hidden_dim_multiplier``; ``dropout_prob``/``drop_modalities_weight``);
  ``module.pose_target_convention``.
- ``ss_decoder.yaml``: the SS VAE decoder (``latent_channels``, ``channels``, ``num_res_blocks``,
  ``num_res_blocks_middle``).
- ``ss_encoder.yaml`` (released 2026-06-01; 0 bytes in older snapshots): the SS VAE encoder, TRELLIS's
  ``SparseStructureEncoder`` (``in_channels`` 1, ``latent_channels``, ``channels`` from the finest
  level, ``num_res_blocks``, ``num_res_blocks_middle``). Our encoder is the decoder's mirror; a file
  that says otherwise is refused with what differs.
- ``pipeline.yaml``: file names (``*_config_path``/``*_ckpt_path``), ``ss_inference_steps``,
  ``ss_rescale_t``, ``ss_cfg_strength``, ``ss_cfg_interval``, ``ss_cfg_strength_pm``,
  ``pose_decoder_name``.

Sampler settings follow the official ``InferencePipeline``: it always overrides the generator's own
(``override_ss_generator_cfg_config``) with its arguments, i.e. pipeline.yaml's ``ss_*`` keys where
given, else its defaults (``INFERENCE_PIPELINE_DEFAULTS``: 25 steps, rescale 3, guidance 7 over
model time [0, 500], no pointmap guidance). The generator YAML's ``inference_steps``, ``rescale_t``,
``strength`` and ``interval`` are the values of its training run (the released file says 2, 1.0 and
2.0) and are never used for sampling.

Nodes are found by what they hold (the node with ``latent_mapping`` is the transformer, the one with
``embedder_list`` the fuser), so wrappers around them do not matter. Sizes a Dino wrapper takes from
its hub model name (``dinov2_vitl14_reg``: 1024 wide, 24 blocks, 16 heads, patch 14, 4 registers,
position embedding for 518 px) can be overridden by its ``backbone_kwargs`` (``img_size`` is a
DINOv2 option; ``embed_dim``/``depth``/``num_heads`` are this project's extension, used only by the
small rehearsal release). The point embedder's ``num_heads``/``mlp_ratio`` (fixed 16 and 2.0 in the
official code) are read the same way when present.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..errors import ConfigError
from .config import EMBEDDER_INPUTS, ModelConfig, PointEmbedConfig, ViTConfig

# The official InferencePipeline's keyword defaults for the sparse-structure sampler
# (sam3d_objects/pipeline/inference_pipeline.py, ``__init__``): what samples when pipeline.yaml is silent.
INFERENCE_PIPELINE_DEFAULTS = {"ss_inference_steps": 25, "ss_rescale_t": 3.0, "ss_cfg_strength": 7.0,
                               "ss_cfg_interval": (0.0, 500.0), "ss_cfg_strength_pm": 0.0}
SAMPLER_KEYS = (("steps", "ss_inference_steps"), ("rescale_t", "ss_rescale_t"), ("cfg_strength", "ss_cfg_strength"),
                ("cfg_interval", "ss_cfg_interval"))
GENERATOR_YAML = "ss_generator.yaml"
DECODER_YAML = "ss_decoder.yaml"
ENCODER_YAML = "ss_encoder.yaml"
PIPELINE_YAML = "pipeline.yaml"
POSITION_GROUPS = ("cropped", "full")
# hub model name -> (embed_dim, depth, num_heads); the released embedders are ViT-L/14 with registers
DINO_ARCHS = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}


def _nodes(tree):
    """Every mapping in a YAML tree, depth-first."""
    if isinstance(tree, dict):
        yield tree
        for value in tree.values():
            yield from _nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _nodes(value)


def _node_with(tree, key: str) -> dict | None:
    return next((node for node in _nodes(tree) if key in node), None)


def load_yaml(path: Path) -> dict | None:
    """The mapping in ``path``; None when the file is absent or empty (a 0-byte placeholder)."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if document is None:
        return None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: not a YAML mapping")
    return document


class _Reader:
    """Copies the values found in the YAML into the config, recording what changed."""

    def __init__(self, config: ModelConfig, source: str):
        self.config, self.source, self.changed = config, source, []

    def set(self, obj, attr: str, value, label: str) -> None:
        if value is None:
            return
        current = getattr(obj, attr)
        if isinstance(current, tuple):
            value = tuple(float(v) for v in value)
        elif isinstance(current, bool):
            value = bool(value)
        elif isinstance(current, (int, float, str)):
            value = type(current)(value)
        if value != current:
            setattr(obj, attr, value)
            self.changed.append(f"{label}={value}")


def _read_dino(reader: _Reader, node: dict, vit: ViTConfig, label: str) -> None:
    name = str(node.get("dino_model", "dinov2_vitl14_reg"))
    match = re.fullmatch(r"dinov2_vit([sbl])(\d+)(_reg)?", name)
    if not match:
        raise ConfigError(f"{reader.source}: Dino model {name!r} is not supported (have dinov2_vit{{s,b,l}}14[_reg])")
    dim, depth, heads = DINO_ARCHS[match.group(1)]
    registers = match.group(3) is not None
    implied = {"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": int(match.group(2)),
               "img_size": 518, "num_register_tokens": 4 if registers else 0,
               # DINOv2's hub: the *_reg models interpolate with antialias and no offset
               "interpolate_antialias": registers, "interpolate_offset": 0.0 if registers else 0.1}
    implied.update({k: v for k, v in (node.get("backbone_kwargs") or {}).items() if k in implied or k == "mlp_ratio"})
    for attr, value in implied.items():
        reader.set(vit, attr, value, f"{label}.{attr}")
    reader.set(vit, "input_size", node.get("input_size"), f"{label}.input_size")


def _read_point(reader: _Reader, node: dict, point: PointEmbedConfig) -> None:
    for attr, key in (("input_size", "input_size"), ("patch_size", "patch_size"), ("embed_dim", "embed_dim"),
                      ("num_heads", "num_heads"), ("mlp_ratio", "mlp_ratio"), ("remap", "remap_output")):
        reader.set(point, attr, node.get(key), f"point.{attr}")
    if float(node.get("dropout_prob", 0.0) or 0.0) > 0:
        raise NotImplementedError(f"{reader.source}: PointPatchEmbed with dropout_prob > 0 (its dropped_xyz_token)")


def _read_fuser(reader: _Reader, fuser: dict) -> None:
    config = reader.config
    entries = fuser.get("embedder_list") or []
    names = [[pair[0] for pair in entry[1]] for entry in entries if isinstance(entry, list) and len(entry) == 2]
    if names != [list(pair) for pair in EMBEDDER_INPUTS]:
        raise ConfigError(f"{reader.source}: the condition embedder's inputs {names} are not the layout this "
                          f"model implements {[list(p) for p in EMBEDDER_INPUTS]}")
    groups = [[pair[1] for pair in entry[1]] for entry in entries]
    if any(g != list(POSITION_GROUPS) for g in groups):
        raise ConfigError(f"{reader.source}: position groups {groups} are not (cropped, full) for every embedder")
    for index, (vit, label) in enumerate(((config.image_vit, "image_vit"), (config.mask_vit, "mask_vit"))):
        dino = _node_with(entries[index][0], "input_size")
        if dino is None:
            raise ConfigError(f"{reader.source}: embedder {index} has no Dino settings (input_size, dino_model)")
        _read_dino(reader, dino, vit, label)
    _read_point(reader, entries[2][0], config.point)
    reader.set(config, "cond_dim", max(config.image_vit.embed_dim, config.mask_vit.embed_dim, config.point.embed_dim),
               "cond_dim")
    reader.set(config, "projection_hidden_multiplier", fuser.get("projection_net_hidden_dim_multiplier"),
               "projection_hidden_multiplier")
    reader.set(config.objective, "modality_dropout_prob", fuser.get("dropout_prob", 0.0), "objective.modality_dropout_prob")
    weights = fuser.get("drop_modalities_weight")
    if weights is not None:
        reader.set(config.objective, "modality_dropout", [[list(m), float(w)] for m, w in weights],
                   "objective.modality_dropout")


def _read_transformer(reader: _Reader, mot: dict) -> None:
    flow = reader.config.flow
    for attr in ("model_channels", "num_blocks", "mlp_ratio", "qk_rms_norm", "qk_rms_norm_cross",
                 "is_shortcut_model", "use_fp16"):
        reader.set(flow, attr, mot.get(attr), f"flow.{attr}")
    heads = mot.get("num_heads")
    if heads is None and mot.get("num_head_channels"):
        heads = flow.model_channels // int(mot["num_head_channels"])
    reader.set(flow, "num_heads", heads, "flow.num_heads")
    shape = (mot.get("latent_mapping") or {}).get("shape") or {}
    reader.set(flow, "latent_channels", shape.get("in_channels"), "flow.latent_channels")
    embedder = shape.get("pos_embedder") or {}
    if embedder.get("resolution") is not None:
        reader.set(flow, "resolution", int(embedder["resolution"]) // int(embedder.get("patch_size", 1)), "flow.resolution")
    cond_channels = mot.get("cond_channels")
    if cond_channels is not None and int(cond_channels) != reader.config.cond_dim:
        raise ConfigError(f"{reader.source}: the transformer's cond_channels {cond_channels} differ from the "
                          f"condition embedder's width {reader.config.cond_dim}")


def _read_generator(reader: _Reader, document: dict) -> None:
    config = reader.config
    module = document.get("module", document)
    reader.set(config, "pose_convention", module.get("pose_target_convention"), "pose_convention")
    fuser = _node_with(module, "embedder_list")
    if fuser is not None:
        _read_fuser(reader, fuser)
    mot = _node_with(module, "latent_mapping")
    if mot is not None:
        _read_transformer(reader, mot)
    guidance = _node_with(module, "p_unconditional")
    if guidance is not None:  # its strength and interval are the training run's: the pipeline sets the sampler's
        reader.set(config.objective, "cond_drop_prob", guidance.get("p_unconditional"), "objective.cond_drop_prob")
    flow_model = _node_with(module, "reverse_fn")
    if flow_model is not None:  # likewise inference_steps and rescale_t; time_scale is the model's own
        reader.set(config.sampler, "time_scale", flow_model.get("time_scale"), "sampler.time_scale")
        times = flow_model.get("training_time_sampler_fn")
        if isinstance(times, dict):
            reader.set(config.objective, "logit_normal_mean", times.get("mean"), "objective.logit_normal_mean")
            reader.set(config.objective, "logit_normal_std", times.get("std"), "objective.logit_normal_std")


def _read_decoder(reader: _Reader, document: dict) -> None:
    node = _node_with(document, "channels")
    if node is None:
        return
    vae = reader.config.vae
    reader.set(vae, "channels", [int(c) for c in node["channels"]], "vae.channels")
    for attr in ("latent_channels", "num_res_blocks", "num_res_blocks_middle"):
        reader.set(vae, attr, node.get(attr), f"vae.{attr}")


def _read_encoder(reader: _Reader, document: dict) -> None:
    """The encoder's sizes must be the decoder's mirror (how ``SparseStructureEncoder`` is built)."""
    node = _node_with(document, "channels")
    if node is None:
        return
    vae = reader.config.vae
    found = {"channels": [int(c) for c in node["channels"]], "latent_channels": node.get("latent_channels"),
             "num_res_blocks": node.get("num_res_blocks"), "num_res_blocks_middle": node.get("num_res_blocks_middle"),
             "in_channels": node.get("in_channels", 1)}
    mirror = {"channels": list(reversed(vae.channels)), "latent_channels": vae.latent_channels,
              "num_res_blocks": vae.num_res_blocks, "num_res_blocks_middle": vae.num_res_blocks_middle, "in_channels": 1}
    differ = [f"{k} {found[k]} (the decoder's mirror: {mirror[k]})" for k in mirror
              if found[k] is not None and found[k] != mirror[k]]
    if differ:
        raise ConfigError(f"{reader.source}: the SS encoder is not the mirror of the decoder that sam3d-med builds: "
                          + "; ".join(differ))


def _read_pipeline(reader: _Reader, pipeline: dict) -> None:
    """The sampler as the official InferencePipeline sets it: pipeline.yaml's keys, else its defaults."""
    config = reader.config
    for attr, key in SAMPLER_KEYS:
        value = pipeline.get(key)
        reader.set(config.sampler, attr, INFERENCE_PIPELINE_DEFAULTS[key] if value is None else value, f"sampler.{attr}")
    strength_pm = float(pipeline.get("ss_cfg_strength_pm") or 0.0)
    if strength_pm:
        raise ConfigError(f"{reader.source}: ss_cfg_strength_pm={strength_pm} (the official pipeline's pointmap "
                          f"guidance) is not implemented by sam3d-med's sampler: set it to 0.0")
    name = pipeline.get("pose_decoder_name")
    if name not in (None, "default"):
        reader.set(config, "pose_convention", name, "pose_convention")


def apply_official_yaml(config: ModelConfig, folder: str | Path, with_encoder: bool = False) -> list[str]:
    """Update ``config`` from the official YAML files in ``folder`` (those present and not empty).

    Returns what was changed (``name=value``), for the log. Values that are absent leave the
    preset's, except the sampler's: wherever the folder holds official YAML, the sampler is set as
    the official InferencePipeline sets it (pipeline.yaml's ``ss_*`` keys, else its defaults; never
    the generator YAML's training-time values). ``with_encoder``: the folder's encoder weights will
    be loaded, so its ``ss_encoder.yaml`` is checked against the decoder's sizes.
    """
    folder = Path(folder)
    changed: list[str] = []
    readers = [(GENERATOR_YAML, _read_generator), (DECODER_YAML, _read_decoder)]
    if with_encoder:
        readers.append((ENCODER_YAML, _read_encoder))
    documents = {name: load_yaml(folder / name) for name in (GENERATOR_YAML, DECODER_YAML, ENCODER_YAML, PIPELINE_YAML)}
    if documents[GENERATOR_YAML] is not None or documents[PIPELINE_YAML] is not None:
        readers.append((PIPELINE_YAML, _read_pipeline))  # an absent pipeline.yaml: the pipeline's defaults
    for name, read in readers:
        document = documents[name]
        if document is not None or name == PIPELINE_YAML:
            reader = _Reader(config, str(folder / name))
            read(reader, document or {})
            changed += reader.changed
    if config.vae.latent_channels != config.flow.latent_channels:
        raise ConfigError(f"{folder}: the decoder takes {config.vae.latent_channels} latent channels, the "
                          f"generator makes {config.flow.latent_channels}")
    return changed


# ----------------------------------------------------------------------------- writing
def _dino_node(vit: ViTConfig) -> dict:
    node = {"_target_": "sam3d_objects.model.backbone.dit.embedder.dino.Dino", "input_size": vit.input_size,
            "dino_model": "dinov2_vitl14_reg", "prune_network": not vit.with_mask_token, "freeze_backbone": True}
    released = ViTConfig(with_mask_token=vit.with_mask_token, input_size=vit.input_size)
    overrides = {k: getattr(vit, k) for k in ("img_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
                 if getattr(vit, k) != getattr(released, k)}
    if vit.patch_size != released.patch_size or vit.num_register_tokens != released.num_register_tokens:
        raise ConfigError("the official schema names a dinov2_vitl14_reg: patch size 14 and 4 registers")
    if overrides:
        node["backbone_kwargs"] = overrides
    return node


def official_yaml_documents(config: ModelConfig, files: dict[str, str], with_encoder: bool = False) -> dict[str, dict]:
    """The YAML documents of a release of ``config`` in the official schema (the inverse of
    ``apply_official_yaml``). ``files``: component -> (config name, checkpoint name) for pipeline.yaml.
    ``with_encoder``: also ``ss_encoder.yaml`` (the decoder's mirror)."""
    flow, point, objective, sampler = config.flow, config.point, config.objective, config.sampler
    position = {"_target_": "sam3d_objects.model.backbone.tdfy_dit.models.mm_latent.LearntPositionEmbedder",
                "model_channels": flow.model_channels, "token_len": 1}
    latent_mapping = {"shape": {
        "_target_": "sam3d_objects.model.backbone.tdfy_dit.models.mm_latent.Latent",
        "in_channels": flow.latent_channels, "model_channels": flow.model_channels,
        "pos_embedder": {"_target_": "sam3d_objects.model.backbone.tdfy_dit.models.mm_latent.ShapePositionEmbedder",
                         "model_channels": flow.model_channels, "resolution": flow.resolution, "patch_size": 1}}}
    for name, channels in (("6drotation_normalized", 6), ("translation", 3), ("scale", 3), ("translation_scale", 1)):
        latent_mapping[name] = {"_target_": "sam3d_objects.model.backbone.tdfy_dit.models.mm_latent.Latent",
                                "in_channels": channels, "model_channels": flow.model_channels, "pos_embedder": dict(position)}
    transformer = {
        "_target_": "sam3d_objects.model.backbone.tdfy_dit.models.mot_sparse_structure_flow.SparseStructureFlowTdfyWrapper",
        "in_channels": flow.latent_channels, "out_channels": flow.latent_channels,
        "model_channels": flow.model_channels, "cond_channels": config.cond_dim, "num_blocks": flow.num_blocks,
        "num_heads": flow.num_heads, "mlp_ratio": flow.mlp_ratio, "pe_mode": "ape", "use_fp16": flow.use_fp16,
        "qk_rms_norm": flow.qk_rms_norm, "qk_rms_norm_cross": flow.qk_rms_norm_cross,
        "is_shortcut_model": flow.is_shortcut_model, "latent_mapping": latent_mapping,
        "latent_share_transformer": {"6drotation_normalized": ["6drotation_normalized", "translation", "scale",
                                                               "translation_scale"]}}
    generator = {
        "_target_": "sam3d_objects.model.backbone.generator.shortcut.model.ShortCut",
        "inference_steps": sampler.steps, "rescale_t": sampler.rescale_t, "time_scale": sampler.time_scale,
        "training_time_sampler_fn": {"_target_": "sam3d_objects.model.backbone.generator.flow_matching.model.lognorm_sampler",
                                     "_partial_": True, "mean": objective.logit_normal_mean,
                                     "std": objective.logit_normal_std},
        "reverse_fn": {"_target_": "sam3d_objects.model.backbone.generator.classifier_free_guidance.ClassifierFreeGuidance",
                       "p_unconditional": objective.cond_drop_prob, "strength": sampler.cfg_strength,
                       "interval": list(sampler.cfg_interval), "unconditional_handling": "zeros",
                       "backbone": transformer}}
    point_node = {"_target_": "sam3d_objects.model.backbone.dit.embedder.pointmap.PointPatchEmbed",
                  "input_size": point.input_size, "patch_size": point.patch_size, "embed_dim": point.embed_dim,
                  "remap_output": point.remap}
    if (point.num_heads, point.mlp_ratio) != (16, 2.0):
        point_node.update(num_heads=point.num_heads, mlp_ratio=point.mlp_ratio)
    fuser = {
        "_target_": "sam3d_objects.model.backbone.dit.embedder.embedder_fuser.EmbedderFuser",
        "projection_net_hidden_dim_multiplier": config.projection_hidden_multiplier, "use_pos_embedding": "learned",
        "dropout_prob": objective.modality_dropout_prob,
        "drop_modalities_weight": [[list(m), float(w)] for m, w in objective.modality_dropout],
        "embedder_list": [[node, [[name, group] for name, group in zip(inputs, POSITION_GROUPS)]]
                          for node, inputs in zip((_dino_node(config.image_vit), _dino_node(config.mask_vit), point_node),
                                                  EMBEDDER_INPUTS)]}
    vae = config.vae
    decoder = {"_target_": "sam3d_objects.model.backbone.tdfy_dit.models.sparse_structure_vae.SparseStructureDecoder",
               "out_channels": 1, "latent_channels": vae.latent_channels, "num_res_blocks": vae.num_res_blocks,
               "num_res_blocks_middle": vae.num_res_blocks_middle, "channels": list(vae.channels),
               "use_fp16": True}
    pipeline = {"_target_": "sam3d_objects.pipeline.inference_pipeline_pointmap.InferencePipelinePointMap",
                "ss_inference_steps": sampler.steps, "ss_rescale_t": sampler.rescale_t,
                "ss_cfg_strength": sampler.cfg_strength, "ss_cfg_interval": list(sampler.cfg_interval),
                "pose_decoder_name": config.pose_convention, "dtype": "float16"}
    for component, (config_name, ckpt_name) in files.items():
        pipeline[f"{component}_config_path"] = config_name
        pipeline[f"{component}_ckpt_path"] = ckpt_name
    documents = {GENERATOR_YAML: {"module": {"pose_target_convention": config.pose_convention,
                                             "generator": {"backbone": generator},
                                             "condition_embedder": {"backbone": fuser}}},
                 DECODER_YAML: decoder, PIPELINE_YAML: pipeline}
    if with_encoder:
        documents[ENCODER_YAML] = {
            "_target_": "sam3d_objects.model.backbone.tdfy_dit.models.sparse_structure_vae.SparseStructureEncoderTdfyWrapper",
            "in_channels": 1, "latent_channels": vae.latent_channels, "num_res_blocks": vae.num_res_blocks,
            "num_res_blocks_middle": vae.num_res_blocks_middle, "channels": list(reversed(vae.channels)),
            "use_fp16": True}
    return documents
