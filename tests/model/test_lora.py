import pytest
import torch

from sam3d_med.errors import ConfigError
from sam3d_med.model.checkpoint import load_official_checkpoints, save_official_layout
from sam3d_med.model.flow_matching import flow_matching_loss
from sam3d_med.model.lora import (LoraSettings, adapter_state_dict, apply_lora, load_adapter_state_dict, merge_lora,
                                  trainable_parameters)
from sam3d_med.model.sam3d import SparseStructureModel
from tests.model.conftest import condition_inputs, random_latents


def generator_output(model):
    with torch.no_grad():
        cond = model.condition_embedder(**condition_inputs())
        return model.generator(random_latents(model), torch.full((2,), 600.0), cond)["shape"]


def train_steps(model, steps=3):
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-2)
    occupancy = torch.zeros(2, 1, 64, 64, 64)
    occupancy[:, :, 10:50, 20:40, 15:45] = 1
    targets = model.latent_targets(occupancy)
    for _ in range(steps):
        optimizer.zero_grad()
        cond = model.condition_embedder(**condition_inputs())
        flow_matching_loss(model.generator, targets, cond, model.cfg.objective).loss.backward()
        optimizer.step()


def test_only_adapters_train_and_base_weights_never_change(tiny_model):
    base = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    adapted = apply_lora(tiny_model, LoraSettings(rank=4, alpha=8, include_mlp=True))
    assert len(adapted) == 2 * 14  # per block: 4 self-attn, 6 cross-attn, 4 MLP linears (2 streams)
    names = set(trainable_parameters(tiny_model))
    assert names and all("lora_" in n for n in names)
    train_steps(tiny_model)
    after = tiny_model.state_dict()
    for key, value in base.items():
        peft_key = key
        if key not in after:  # peft moved the wrapped layer's weights under base_layer
            stem, _, leaf = key.rpartition(".")
            peft_key = f"{stem}.base_layer.{leaf}"
        assert torch.equal(after[peft_key], value), key
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in adapter_state_dict(tiny_model).items() if "lora_B" in k)


def test_adapter_save_load_reproduces_outputs(tiny_model, tmp_path):
    apply_lora(tiny_model, LoraSettings(rank=4))
    train_steps(tiny_model)
    expected = generator_output(tiny_model)
    torch.save(adapter_state_dict(tiny_model), tmp_path / "adapter.pt")
    # a fresh model with the same base weights and fresh adapters, then the saved adapters
    fresh = SparseStructureModel.from_preset("tiny").eval()
    base_state = {k.replace(".base_layer", ""): v for k, v in tiny_model.state_dict().items() if "lora_" not in k}
    fresh.load_state_dict(base_state)
    apply_lora(fresh, LoraSettings(rank=4))
    assert not torch.allclose(generator_output(fresh), expected)
    load_adapter_state_dict(fresh, torch.load(tmp_path / "adapter.pt", weights_only=True))
    assert torch.allclose(generator_output(fresh), expected, atol=1e-6)


def test_merge_equals_unmerged_and_exports_official_keys(tiny_model, tmp_path):
    official_keys = set(tiny_model.generator.state_dict())
    apply_lora(tiny_model, LoraSettings(rank=4, include_mlp=True))
    train_steps(tiny_model)
    unmerged = generator_output(tiny_model)
    assert merge_lora(tiny_model) == 28
    assert set(tiny_model.generator.state_dict()) == official_keys
    assert torch.allclose(generator_output(tiny_model), unmerged, atol=1e-5)
    save_official_layout(tiny_model, tmp_path)  # the merged model loads strictly as an official file
    plain = SparseStructureModel.from_preset("tiny").eval()
    load_official_checkpoints(plain, tmp_path)
    assert torch.allclose(generator_output(plain), unmerged, atol=1e-5)


def test_trainable_modules_and_bad_settings(tiny_model):
    apply_lora(tiny_model, LoraSettings(rank=2, trainable_modules=("latent_mapping",)))
    names = trainable_parameters(tiny_model)
    assert any(n.startswith("generator.latent_mapping.shape.input_layer") for n in names)
    with pytest.raises(ConfigError, match="unknown LoRA targets"):
        apply_lora(SparseStructureModel.from_preset("tiny"), LoraSettings(targets=("qkv",)))
    with pytest.raises(ConfigError, match="matches no module"):
        apply_lora(SparseStructureModel.from_preset("tiny"), LoraSettings(trainable_modules=("nothing_here",)))


def test_adapters_can_be_bypassed_for_the_base_function(tiny_model):
    from sam3d_med.model.lora import adapters_disabled

    base = generator_output(tiny_model)
    apply_lora(tiny_model, LoraSettings(rank=4))
    train_steps(tiny_model)
    adapted = generator_output(tiny_model)
    assert not torch.allclose(adapted, base)
    with adapters_disabled(tiny_model):
        assert torch.allclose(generator_output(tiny_model), base, atol=1e-6)
    assert torch.equal(generator_output(tiny_model), adapted)
    assert all(p.requires_grad for n, p in tiny_model.generator.named_parameters() if "lora_" in n)


def test_precision_regions_nested_in_another_dtype_use_their_own_casts_of_trained_weights():
    """The fp16 flow inside training's bf16 validation region: autocast's cast cache would hand the
    adapters' bf16 casts to the fp16 region (on CUDA; the same cache on a CPU reproduces it)."""
    import torch

    from sam3d_med.model.sam3d import precision_region

    adapter = torch.nn.Linear(8, 8)  # a trainable leaf weight, as a LoRA adapter's
    x = torch.randn(2, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        adapter(x)  # cached: the bf16 cast of the weight
        with pytest.raises(RuntimeError, match="same dtype"):
            with torch.autocast("cpu", dtype=torch.float16):
                adapter(x.half())
        with precision_region(torch.float16, True, "cpu"):
            assert adapter(x.half()).dtype == torch.float16
