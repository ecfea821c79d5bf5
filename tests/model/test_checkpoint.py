import subprocess
import sys

import pytest
import torch
import yaml

from sam3d_med.errors import ConfigError

from sam3d_med.model.checkpoint import (CONDITION_PREFIX, FILES, GENERATOR_PREFIX, CheckpointError, build_from_folder,
                                        load_official_checkpoints, read_state_dict, save_official_layout)
from sam3d_med.model.config import get_preset
from sam3d_med.model.official_yaml import apply_official_yaml, official_yaml_documents
from sam3d_med.model.flow_transformer import SHAPE
from sam3d_med.model.sam3d import SparseStructureModel
from tests.model.conftest import condition_inputs, random_latents


def outputs(model):
    cond = model.condition_embedder(**condition_inputs())
    out = model.generator(random_latents(model), torch.full((2,), 400.0), cond, d=torch.zeros(2))
    return cond, out[SHAPE], model.decoder(torch.randn(1, 8, 8, 8, 8, generator=torch.Generator().manual_seed(0))), \
        model.encoder(torch.ones(1, 1, 64, 64, 64))


def test_official_container_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    save_official_layout(tiny_model, tmp_path)
    raw = torch.load(tmp_path / FILES["generator"], weights_only=True)
    assert set(raw) == {"state_dict"}
    assert any(k.startswith(GENERATOR_PREFIX + "blocks.0.self_attn.to_qkv.shape") for k in raw["state_dict"])
    assert any(k.startswith(CONDITION_PREFIX + "module_list.0.backbone.blocks.0.attn.qkv") for k in raw["state_dict"])
    torch.manual_seed(123)
    fresh = SparseStructureModel.from_preset("tiny").eval()
    load_official_checkpoints(fresh, tmp_path)
    with torch.no_grad():
        for a, b in zip(outputs(tiny_model), outputs(fresh)):
            assert torch.equal(a, b)


def test_build_from_folder_follows_the_files(tiny_model, tmp_path):
    config = get_preset("tiny")
    config.image_vit.with_mask_token = config.mask_vit.with_mask_token = False  # a pruned release
    pruned = SparseStructureModel(config).eval()
    save_official_layout(pruned, tmp_path)
    (tmp_path / "pipeline.yaml").write_text("ss_inference_steps: 5\n")
    built = build_from_folder(tmp_path, preset="tiny", log=lambda m: None).eval()
    assert built.cfg.sampler.steps == 5
    assert not hasattr(built.condition_embedder.module_list[0].backbone, "mask_token")
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(outputs(pruned), outputs(built)))


def test_fp16_files_are_cast_to_the_model_dtype(tiny_model, tmp_path):
    save_official_layout(tiny_model, tmp_path, dtype=torch.float16)
    assert read_state_dict(tmp_path / FILES["decoder"])["input_layer.weight"].dtype == torch.float16
    fresh = SparseStructureModel.from_preset("tiny").eval()
    load_official_checkpoints(fresh, tmp_path)
    assert all(p.dtype == torch.float32 for p in fresh.parameters())
    weight = tiny_model.generator.blocks[0].self_attn.to_qkv[SHAPE].weight
    loaded = fresh.generator.blocks[0].self_attn.to_qkv[SHAPE].weight
    assert torch.equal(loaded, weight.half().float())


def test_mismatches_name_the_keys_and_the_file(tiny_model, tmp_path):
    save_official_layout(tiny_model, tmp_path)
    path = tmp_path / FILES["generator"]
    state = torch.load(path, weights_only=True)["state_dict"]
    missing_key = GENERATOR_PREFIX + "blocks.1.cross_attn.shape.to_kv.weight"
    broken = {k: v for k, v in state.items() if k != missing_key}
    broken[GENERATOR_PREFIX + "blocks.1.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": broken}, path)
    fresh = SparseStructureModel.from_preset("tiny")
    with pytest.raises(CheckpointError) as info:
        load_official_checkpoints(fresh, tmp_path, components=("generator",))
    message = str(info.value)
    assert str(path) in message and "blocks.1.cross_attn.shape.to_kv.weight" in message
    assert "1 missing" in message and "1 unexpected" in message and "blocks.1.extra.weight" in message
    # a file made for other sizes: the shape mismatches are named
    torch.save({"state_dict": state}, path)
    other = get_preset("tiny")
    other.flow.model_channels = 96
    with pytest.raises(CheckpointError, match=r"104 shape mismatch \(first: latent_mapping.shape.pos_emb \(512, 64\) vs model \(512, 96\)"):
        load_official_checkpoints(SparseStructureModel(other), tmp_path, components=("generator",))


def test_truncated_corrupt_and_foreign_files(tiny_model, tmp_path):
    save_official_layout(tiny_model, tmp_path)
    path = tmp_path / FILES["generator"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated") as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(CheckpointError, match="unreadable"):
        read_state_dict(path)
    (tmp_path / "ss_encoder.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    with pytest.raises(CheckpointError, match="unreadable"):
        read_state_dict(tmp_path / "ss_encoder.safetensors")
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not an ss_generator checkpoint"):
        load_official_checkpoints(tiny_model, tmp_path, components=("generator",))
    with pytest.raises(CheckpointError, match="missing"):
        read_state_dict(tmp_path / "absent.ckpt")


def test_sizes_and_sampler_are_read_from_official_yaml(tmp_path):
    """The nodes are found by what they hold, inside the official wrappers (ShortCut ->
    ClassifierFreeGuidance -> MOT; EmbedderFuser with its embedder_list)."""
    dino = {"_target_": "...Dino", "input_size": 770, "dino_model": "dinov2_vitl14_reg"}
    fuser = {"embedder_list": [[dino, [["image", "cropped"], ["rgb_image", "full"]]],
                               [{"backbone": dict(dino)}, [["mask", "cropped"], ["rgb_image_mask", "full"]]],
                               [{"input_size": 256, "patch_size": 8, "embed_dim": 512, "remap_output": "linear"},
                                [["pointmap", "cropped"], ["rgb_pointmap", "full"]]]],
             "projection_net_hidden_dim_multiplier": 4.0, "dropout_prob": 0.2,
             "drop_modalities_weight": [[["pointmap", "rgb_pointmap"], 1.0]]}
    mot = {"model_channels": 768, "num_blocks": 12, "num_heads": 12, "cond_channels": 1024, "use_fp16": False,
           "latent_mapping": {"shape": {"in_channels": 8, "pos_embedder": {"resolution": 16}}}}
    generator = {"inference_steps": 30, "reverse_fn": {"p_unconditional": 0.15, "strength": 5.0, "backbone": mot}}
    (tmp_path / "ss_generator.yaml").write_text(yaml.safe_dump({"module": {
        "generator": {"backbone": generator}, "condition_embedder": {"backbone": fuser},
        "pose_target_convention": "ScaleShiftInvariant"}}))
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(
        {"ss_inference_steps": 12, "ss_cfg_strength": 5, "ss_cfg_interval": [0, 600]}))
    (tmp_path / "ss_encoder.yaml").write_bytes(b"")  # the release's placeholder is not read
    cfg = get_preset("sam3d")
    cfg.image_vit.input_size = cfg.mask_vit.input_size = 518
    changed = apply_official_yaml(cfg, tmp_path)
    assert (cfg.flow.model_channels, cfg.flow.num_blocks, cfg.flow.num_heads, cfg.flow.use_fp16) == (768, 12, 12, False)
    assert cfg.image_vit.input_size == cfg.mask_vit.input_size == 770 and cfg.condition_tokens == 14_152
    assert (cfg.objective.cond_drop_prob, cfg.objective.modality_dropout_prob) == (0.15, 0.2)
    # pipeline.yaml's sampler settings win over the generator's, as in the official pipeline
    assert (cfg.sampler.steps, cfg.sampler.cfg_strength, cfg.sampler.cfg_interval) == (12, 5.0, (0.0, 600.0))
    assert "flow.num_blocks=12" in changed and "image_vit.input_size=770" in changed
    # an embedder layout other than the one implemented is refused by name
    fuser["embedder_list"][2][1] = [["depth", "cropped"], ["rgb_depth", "full"]]
    (tmp_path / "ss_generator.yaml").write_text(yaml.safe_dump({"module": {"condition_embedder": {"backbone": fuser}}}))
    with pytest.raises(ConfigError, match="not the layout this model implements"):
        apply_official_yaml(get_preset("sam3d"), tmp_path)


@pytest.mark.parametrize("preset", ["sam3d", "tiny"])
def test_official_yaml_written_and_read_back_gives_the_same_sizes(tmp_path, preset):
    config = get_preset(preset)
    config.objective.modality_dropout_prob = 0.05
    for name, document in official_yaml_documents(config, {}).items():
        (tmp_path / name).write_text(yaml.safe_dump(document))
    read = get_preset("sam3d")
    apply_official_yaml(read, tmp_path)
    read.name = config.name
    assert read == config


def test_model_info_command_prints_counts_without_weights():
    done = subprocess.run([sys.executable, "-m", "sam3d_med.cli", "model-info", "--preset", "sam3d"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ss_generator (total)" in done.stdout and "1,594" in done.stdout and "ss_decoder" in done.stdout
    # without YAML files: the released Dino input size
    assert "Dino input 770 px (position embedding stored for 518 px)" in done.stdout
    assert "14,152 condition tokens x 1024" in done.stdout
