"""The release as Meta ships it: Lightning container, fp16 decoder, encoder placeholders, Dino at
its released input size, pose latents in the normalised convention, official condition dropout."""

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F

from sam3d_med.model.checkpoint import (FILES, CheckpointError, build_from_folder, encoder_released,
                                        lightning_container, read_state_dict, save_official_layout)
from sam3d_med.model.config import get_preset
from sam3d_med.model.flow_matching import flow_matching_loss
from sam3d_med.model.flow_transformer import POSE_MEMBERS, SHAPE
from sam3d_med.model.pose import (ROTATION_6D_MEAN, ROTATION_6D_STD, Pose, decode_pose, encode_pose, identity_pose,
                                  rotation_angle_deg)
from sam3d_med.model.sam3d import SparseStructureModel
from sam3d_med.model.vae import SparseStructureDecoder
from sam3d_med.model.vit import DinoVisionTransformer
from tests.model.conftest import condition_inputs, random_latents


def test_lightning_checkpoint_is_read_without_running_its_code(tiny_model, tmp_path):
    """What Lightning writes (DictConfig hyper-parameters, version, loops, optimizer states), fp16
    tensors, and an object whose unpickling would run code: the tensors load, nothing runs."""
    from omegaconf import OmegaConf

    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    state = {k: v.half() for k, v in tiny_model.generator.state_dict().items()}
    container = lightning_container(state, {"module": {"pose_target_convention": "ScaleShiftInvariant"}})
    container["optimizer_states"] = [{"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-4}]}]
    container["callbacks"] = {"ModelCheckpoint": Payload()}
    assert isinstance(container["hyper_parameters"], type(OmegaConf.create({})))
    path = tmp_path / "ss_generator.ckpt"
    torch.save(container, path)
    with pytest.raises(Exception, match="(?i)weights only load failed"):
        torch.load(path, weights_only=True)  # what the first, plain attempt meets
    messages = []
    loaded = read_state_dict(path, log_fn=messages.append)
    assert not marker.exists()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert loaded[next(iter(loaded))].dtype == torch.float16
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "without running code" in messages[0] and "omegaconf.dictconfig.DictConfig" in messages[0]


def test_placeholders_and_truncated_files_give_one_line(tmp_path):
    (tmp_path / "ss_encoder.safetensors").write_bytes(b"")
    assert not encoder_released(tmp_path)
    with pytest.raises(CheckpointError, match="0-byte file"):
        read_state_dict(tmp_path / "ss_encoder.safetensors")


def test_build_from_a_folder_packaged_like_the_release(tiny_model, tmp_path):
    save_official_layout(tiny_model, tmp_path, release=True, encoder_released=False)  # a snapshot before 2026-06-01
    assert (tmp_path / "ss_encoder.safetensors").stat().st_size == 0 and (tmp_path / "ss_encoder.yaml").stat().st_size == 0
    assert read_state_dict(tmp_path / FILES["decoder"])["input_layer.weight"].dtype == torch.float16
    raw = torch.load(tmp_path / FILES["generator"], weights_only=False)
    assert {"state_dict", "hyper_parameters", "pytorch-lightning_version"} <= set(raw)
    messages = []
    built = build_from_folder(tmp_path, preset="sam3d", log=messages.append).eval()  # sizes from the YAML
    assert built.encoder is None and built.cfg == dataclasses.replace(tiny_model.cfg, name="sam3d")
    assert any("ss_encoder.safetensors is a 0-byte placeholder" in m and "inverting the released decoder" in m
               for m in messages)
    with torch.no_grad():
        cond = built.condition_embedder(**condition_inputs())
        assert torch.equal(cond, tiny_model.condition_embedder(**condition_inputs()))
        latent = torch.randn(1, 8, 8, 8, 8, generator=torch.Generator().manual_seed(0))
        reference = SparseStructureDecoder(tiny_model.cfg.vae)
        reference.load_state_dict({k: v.half().float() for k, v in tiny_model.decoder.state_dict().items()})
        assert torch.equal(built.decoder(latent), reference(latent))
    with pytest.raises(Exception, match="no SS encoder"):
        built.latent_targets(torch.zeros(1, 1, 64, 64, 64))


def test_dino_position_embedding_interpolates_as_dinov2():
    """Stored for 28 px (2 x 2 patches), run at 42 px (3 x 3): bicubic with antialias, no offset
    (the *_reg hub models); with an offset: by scale factor (n + offset) / M."""
    config = get_preset("tiny").image_vit
    config = dataclasses.replace(config, img_size=28, input_size=42)
    torch.manual_seed(0)
    vit = DinoVisionTransformer(config)
    assert vit.pos_embed.shape == (1, 5, config.embed_dim)
    assert vit._pos_embed(2, 2) is vit.pos_embed
    grid = vit.pos_embed[:, 1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(3, 3), mode="bicubic", antialias=True).flatten(2).transpose(1, 2)
    got = vit._pos_embed(3, 3)
    assert got.shape == (1, 10, config.embed_dim)
    assert torch.equal(got[:, :1], vit.pos_embed[:, :1]) and torch.allclose(got[:, 1:], expected)
    vit.cfg = dataclasses.replace(config, interpolate_offset=0.1, interpolate_antialias=False)
    expected = F.interpolate(grid, scale_factor=(3.1 / 2, 3.1 / 2), mode="bicubic").flatten(2).transpose(1, 2)
    assert torch.allclose(vit._pos_embed(3, 3)[:, 1:], expected)
    tokens = vit(torch.randn(2, 3, 42, 42))
    assert tokens.shape == (2, 10, config.embed_dim)


def test_released_sizes_give_14152_condition_tokens_and_load_the_stored_position_embedding():
    config = get_preset("sam3d")
    assert config.image_vit.input_size == 770 and config.image_vit.tokens == 3026
    assert config.condition_tokens == 4 * 3026 + 2 * 1024 == 14_152
    with torch.device("meta"):
        model = SparseStructureModel(config)
    assert model.condition_embedder.module_list[0].backbone.pos_embed.shape == (1, 1370, 1024)


def test_pose_latents_follow_the_released_convention():
    identity = encode_pose(identity_pose(2))
    assert set(identity) == set(POSE_MEMBERS) and identity["translation"].shape == (2, 1, 3)
    expected_6d = (torch.tensor([1.0, 0, 0, 0, 1, 0]) - torch.tensor(ROTATION_6D_MEAN)) / torch.tensor(ROTATION_6D_STD)
    assert torch.allclose(identity["6drotation_normalized"][0, 0], expected_6d)
    assert torch.equal(identity["scale"], torch.zeros(2, 1, 3)) and torch.equal(identity["translation_scale"], torch.zeros(2, 1, 1))
    decoded = decode_pose(identity)
    assert torch.allclose(decoded.rotation, torch.eye(3).expand(2, 3, 3), atol=1e-6)
    assert torch.allclose(decoded.scale, torch.ones(2, 3)) and torch.equal(decoded.translation, torch.zeros(2, 3))
    # the raw identity that the old targets used: 52.6 degrees and a scale of e under this convention
    raw = {"6drotation_normalized": torch.tensor([[[1.0, 0, 0, 0, 1, 0]]]), "translation": torch.zeros(1, 1, 3),
           "scale": torch.ones(1, 1, 3), "translation_scale": torch.ones(1, 1, 1)}
    wrong = decode_pose(raw)
    assert math.isclose(float(rotation_angle_deg(wrong.rotation)), 52.6, abs_tol=0.05)
    assert torch.allclose(wrong.scale, torch.full((1, 3), math.e))


def test_pose_round_trip_and_the_official_row_vector_form():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    w, x, y, z = q.unbind(-1)  # quaternion -> rotation matrix (column vectors)
    rotation = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(5, 3, 3)
    pose = Pose(rotation, torch.randn(5, 3, generator=g), torch.rand(5, 3, generator=g) + 0.5)
    back = decode_pose(encode_pose(pose))
    for a, b in ((back.rotation, pose.rotation), (back.translation, pose.translation), (back.scale, pose.scale)):
        assert torch.allclose(a, b, atol=1e-5)
    # the official decoder's matrix [b1 b2 b3] acts on row vectors: p @ R_official + t
    points = torch.randn(5, 7, 3, generator=g)
    column_form = torch.einsum("bij,bnj->bni", pose.rotation, points * pose.scale[:, None]) + pose.translation[:, None]
    official = (points * pose.scale[:, None]) @ back.rotation.transpose(1, 2) + pose.translation[:, None]
    assert torch.allclose(column_form, official, atol=1e-5)


def test_targets_use_the_normalised_identity_pose(tiny_model):
    targets = tiny_model.latent_targets(torch.zeros(2, 1, 64, 64, 64))
    decoded = decode_pose({k: targets[k] for k in POSE_MEMBERS})
    assert torch.allclose(decoded.rotation, torch.eye(3).expand(2, 3, 3), atol=1e-6)
    assert torch.allclose(decoded.scale, torch.ones(2, 3))


def test_condition_dropout_is_one_coin_per_batch(tiny_model):
    """ClassifierFreeGuidance in training: the whole batch is unconditional, or none of it."""
    seen = []

    def backbone(x_t, t, cond, d=None):
        seen.append([bool(cond[b].abs().sum() == 0) for b in range(cond.shape[0])])
        return {k: torch.zeros_like(v) for k, v in x_t.items()}

    objective = dataclasses.replace(tiny_model.cfg.objective, cond_drop_prob=0.5)
    targets = random_latents(tiny_model, batch=4)
    cond = torch.ones(4, 5, 8)
    for seed in range(40):
        flow_matching_loss(backbone, targets, cond, objective, generator=torch.Generator().manual_seed(seed))
    assert all(len(set(flags)) == 1 for flags in seen)
    assert 5 < sum(flags[0] for flags in seen) < 35


def test_modality_dropout_drops_the_pointmap_streams_per_sample_in_training_only(tiny_model):
    embedder = tiny_model.condition_embedder
    embedder.objective = dataclasses.replace(embedder.objective, modality_dropout_prob=0.5)
    inputs = condition_inputs(batch=16)
    tokens_per_stream = [17, 17, 17, 17, 16, 16]  # tiny: Dino 1 + 4^2, points 4^2
    embedder.train()
    cond = embedder(generator=torch.Generator().manual_seed(0), **inputs)
    streams = torch.split(cond, tokens_per_stream, dim=1)
    dropped = [[bool(s[b].abs().sum() == 0) for b in range(16)] for s in streams]
    assert dropped[4] == dropped[5] and 0 < sum(dropped[4]) < 16  # both pointmap streams, per sample
    assert not any(any(d) for d in dropped[:4])
    embedder.eval()
    assert all(s.abs().sum() > 0 for s in torch.split(embedder(**inputs), tokens_per_stream, dim=1))


def test_pose_position_embeddings_are_parameters_and_shape_is_a_buffer(tiny_model):
    parameters = dict(tiny_model.generator.named_parameters())
    buffers = dict(tiny_model.generator.named_buffers())
    for name in POSE_MEMBERS:
        assert f"latent_mapping.{name}.pos_emb" in parameters
    assert f"latent_mapping.{SHAPE}.pos_emb" in buffers


def test_sampling_precision_keeps_a_float32_state(tiny_model):
    inputs = {k: v[:1] for k, v in condition_inputs().items()}
    sampler = dataclasses.replace(tiny_model.cfg.sampler, steps=2)
    logits = tiny_model.reconstruct(inputs, seed=0, sampler=sampler)
    assert logits.dtype == torch.float32 and logits.shape == (1, 1, 64, 64, 64)
    assert torch.isfinite(logits).all()
    assert tiny_model.generator.latent_shapes()[SHAPE] == (512, 8)
