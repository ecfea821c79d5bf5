import math

import pytest
import torch

from sam3d_med.model.config import get_preset
from sam3d_med.model.flow_transformer import POSE_MEMBERS, SHAPE
from sam3d_med.model.sam3d import SparseStructureModel, parameter_counts
from sam3d_med.model.vae import latent_cube_to_tokens, pixel_shuffle_3d, tokens_to_latent_cube
from tests.model.conftest import condition_inputs, random_latents


@pytest.fixture(scope="module")
def full_model_on_meta():
    return SparseStructureModel.from_preset("sam3d", device="meta")


def test_official_sizes_without_allocating(full_model_on_meta):
    counts = parameter_counts(full_model_on_meta)
    assert 1.55e9 < counts["ss_generator (total)"] < 1.65e9  # "about 1.6B"
    assert 0.94e9 < counts["ss_generator/flow_transformer"] < 0.98e9  # "about 0.96B"
    assert 0.60e9 < counts["ss_generator/condition_embedder/image_dino"] * 2 < 0.62e9  # two ViT-L/14
    assert 73e6 < counts["ss_decoder"] < 75e6  # "about 74M"
    assert all(p.is_meta for p in full_model_on_meta.parameters())


# Key layout of the official files (DESIGN.md section 4 and the public code): name -> shape.
OFFICIAL_KEYS = {
    "generator": {
        "latent_mapping.shape.input_layer.weight": (1024, 8),
        "latent_mapping.shape.pos_emb": (4096, 1024),
        "latent_mapping.6drotation_normalized.input_layer.weight": (1024, 6),
        "latent_mapping.translation_scale.out_layer.weight": (1, 1024),
        "t_embedder.mlp.0.weight": (1024, 256),
        "d_embedder.mlp.2.weight": (1024, 1024),
        "blocks.0.adaLN_modulation.1.weight": (6144, 1024),
        "blocks.0.self_attn.to_qkv.shape.weight": (3072, 1024),
        "blocks.0.self_attn.q_rms_norm.6drotation_normalized.gamma": (16, 64),
        "blocks.23.self_attn.to_out.6drotation_normalized.bias": (1024,),
        "blocks.23.cross_attn.shape.to_q.weight": (1024, 1024),
        "blocks.23.cross_attn.shape.to_kv.weight": (2048, 1024),
        "blocks.5.norm2.shape.weight": (1024,),
        "blocks.5.mlp.6drotation_normalized.mlp.0.weight": (4096, 1024),
        "blocks.5.mlp.shape.mlp.2.weight": (1024, 4096),
    },
    "condition_embedder": {
        "module_list.0.backbone.patch_embed.proj.weight": (1024, 3, 14, 14),
        "module_list.0.backbone.pos_embed": (1, 1370, 1024),
        "module_list.0.backbone.register_tokens": (1, 4, 1024),
        "module_list.1.backbone.blocks.23.attn.qkv.weight": (3072, 1024),
        "module_list.1.backbone.blocks.0.ls1.gamma": (1024,),
        "module_list.0.backbone.norm.weight": (1024,),
        "module_list.2.point_proj.weight": (512, 3),
        "module_list.2.invalid_xyz_token": (512,),
        "module_list.2.pos_embed": (1, 512, 32, 32),
        "module_list.2.pos_embed_window": (1, 65, 512),
        "module_list.2.blocks.0.mlp.fc1.weight": (1024, 512),
        "projection_nets.0.1.w1.weight": (2816, 1024),
        "projection_nets.2.0.weight": (512,),
        "projection_nets.2.1.w2.weight": (1024, 2816),
        "idx_emb": (3, 1024),
    },
    "decoder": {
        "input_layer.weight": (512, 8, 3, 3, 3),
        "middle_block.1.conv2.weight": (512, 512, 3, 3, 3),
        "blocks.2.conv.weight": (1024, 512, 3, 3, 3),  # up-sampling: 128 * 8 channels, pixel shuffle
        "blocks.6.norm1.weight": (32,),
        "out_layer.2.weight": (1, 32, 3, 3, 3),
    },
    "encoder": {
        "input_layer.weight": (32, 1, 3, 3, 3),
        "blocks.2.conv.weight": (128, 32, 2, 2, 2),
        "out_layer.2.weight": (16, 512, 3, 3, 3),
    },
}


@pytest.mark.parametrize("component", sorted(OFFICIAL_KEYS))
def test_full_preset_key_layout(full_model_on_meta, component):
    state = getattr(full_model_on_meta, component).state_dict()
    for key, shape in OFFICIAL_KEYS[component].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    # the stream ModuleDicts hold exactly the two official streams
    if component == "generator":
        streams = {k.split(".")[4] for k in state if k.startswith("blocks.0.self_attn.to_qkv.")}
        assert streams == {"shape", "6drotation_normalized"}
        assert not any("mask_token" in k for k in state)


def test_condition_token_count_of_the_official_sizes():
    cfg = get_preset("sam3d")
    dino_tokens = 1 + (cfg.image_vit.input_size // cfg.image_vit.patch_size) ** 2  # 770 px: 1 + 55^2
    point_tokens = (cfg.point.input_size // cfg.point.patch_size) ** 2
    assert dino_tokens == 3026 and 4 * dino_tokens + 2 * point_tokens == cfg.condition_tokens == 14_152
    stored = 1 + (cfg.image_vit.img_size // cfg.image_vit.patch_size) ** 2  # the checkpoint's pos_embed grid
    assert 4 * stored + 2 * point_tokens == 7528


def test_tiny_forward_shapes(tiny_model):
    cond = tiny_model.condition_embedder(**condition_inputs())
    cfg = tiny_model.cfg
    expected_tokens = 4 * (1 + (cfg.image_vit.input_size // cfg.image_vit.patch_size) ** 2) \
        + 2 * (cfg.point.input_size // cfg.point.patch_size) ** 2
    assert cond.shape == (2, expected_tokens, cfg.cond_dim)
    latents = random_latents(tiny_model)
    out = tiny_model.generator(latents, torch.full((2,), 500.0), cond, d=torch.zeros(2))
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in latents.items()}
    occupancy = tiny_model.decode_shape(out[SHAPE])
    assert occupancy.shape == (2, 1, 64, 64, 64)
    assert tiny_model.encoder(torch.sigmoid(occupancy)).shape == (2, 8, 8, 8, 8)


def test_shape_stream_ignores_pose_tokens_but_pose_reads_shape(tiny_model):
    """MOT rule: shape attends to shape only; pose attends to pose and shape."""
    cond = tiny_model.condition_embedder(**condition_inputs())
    t = torch.full((2,), 300.0)
    base = random_latents(tiny_model, seed=1)
    other_pose = dict(base, **{k: torch.randn_like(base[k]) for k in POSE_MEMBERS})
    other_shape = dict(base, shape=torch.randn_like(base[SHAPE]))
    a, b, c = (tiny_model.generator(x, t, cond) for x in (base, other_pose, other_shape))
    assert torch.allclose(a[SHAPE], b[SHAPE], atol=1e-6)
    assert not torch.allclose(a["translation"], c["translation"], atol=1e-4)


def test_condition_changes_the_output(tiny_model):
    latents = random_latents(tiny_model)
    t = torch.full((2,), 300.0)
    a = tiny_model.generator(latents, t, tiny_model.condition_embedder(**condition_inputs(seed=1)))
    b = tiny_model.generator(latents, t, tiny_model.condition_embedder(**condition_inputs(seed=2)))
    assert not torch.allclose(a[SHAPE], b[SHAPE], atol=1e-4)


def test_invalid_points_use_the_invalid_token(tiny_model):
    inputs = condition_inputs()
    nan_inputs = dict(inputs, pointmap=torch.full_like(inputs["pointmap"], float("nan")))
    cond = tiny_model.condition_embedder(**nan_inputs)
    assert torch.isfinite(cond).all()


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    cond = tiny_model.condition_embedder(**condition_inputs()).detach()
    latents = random_latents(tiny_model)
    grads = []
    for use in (False, True):
        tiny_model.zero_grad()
        for block in tiny_model.generator.blocks:
            block.use_checkpoint = use
        out = tiny_model.generator(latents, torch.full((2,), 700.0), cond)
        sum(v.square().sum() for v in out.values()).backward()
        grads.append(tiny_model.generator.blocks[0].self_attn.to_qkv["shape"].weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_pixel_shuffle_and_token_order():
    x = torch.arange(2 * 16 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 16, 2, 3, 4)
    y = pixel_shuffle_3d(x, 2)
    assert y.shape == (2, 2, 4, 6, 8)
    # channel (c, a, b, e) lands at spatial offset (a, b, e) of its 2x2x2 cell
    c, a, b, e, d, h, w = 1, 1, 0, 1, 1, 2, 3
    assert y[0, c, 2 * d + a, 2 * h + b, 2 * w + e] == x[0, c * 8 + a * 4 + b * 2 + e, d, h, w]
    cube = torch.randn(2, 8, 4, 4, 4)
    tokens = latent_cube_to_tokens(cube)
    assert torch.equal(tokens[:, 1 * 16 + 2 * 4 + 3], cube[:, :, 1, 2, 3])  # [i, j, k] row-major
    assert torch.equal(tokens_to_latent_cube(tokens), cube)


def test_shape_position_embedding_is_the_fixed_sinusoid(tiny_model):
    pos = tiny_model.generator.latent_mapping[SHAPE].pos_emb
    r, C = tiny_model.cfg.flow.resolution, tiny_model.cfg.flow.model_channels
    freq_dim = C // 3 // 2
    i, j, k = 1, 2, 3
    token = pos[i * r * r + j * r + k]
    freqs = 1.0 / 10000 ** (torch.arange(freq_dim) / freq_dim)
    expected_i = torch.cat([torch.sin(i * freqs), torch.cos(i * freqs)])
    assert torch.allclose(token[:2 * freq_dim], expected_i, atol=1e-6)
    assert math.isclose(float(token[-1]), 0.0) or C % 6 == 0


@pytest.mark.parametrize("component", ["generator", "condition_embedder", "decoder", "encoder"])
def test_full_preset_key_set_equals_the_official_listing(full_model_on_meta, component):
    import re

    from tests.model.official_layout import OFFICIAL_BLOCK_COUNTS, OFFICIAL_KEY_PATTERNS

    keys = getattr(full_model_on_meta, component).state_dict().keys()
    assert {re.sub(r"blocks\.\d+\.", "blocks.*.", k) for k in keys} == set(OFFICIAL_KEY_PATTERNS[component])
    counts: dict[str, set[int]] = {}
    for key in keys:
        match = re.match(r"(.*?)blocks\.(\d+)\.", key)
        if match:
            counts.setdefault(match.group(1), set()).add(int(match.group(2)))
    assert {prefix: len(indices) for prefix, indices in counts.items()} == OFFICIAL_BLOCK_COUNTS[component]
