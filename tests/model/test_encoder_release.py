"""The release as it is since 2026-06-01 (the SS encoder released as ``ss_encoder.ckpt``), the older
snapshots (0-byte placeholders), and the sampler as the official InferencePipeline sets it."""

import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import save_file

from sam3d_med.errors import ConfigError
from sam3d_med.model.checkpoint import (CheckpointError, build_from_folder, lightning_container, read_state_dict,
                                        save_official_layout)
from sam3d_med.model.config import get_preset
from sam3d_med.model.official_yaml import apply_official_yaml, official_yaml_documents
from sam3d_med.model.release_files import component_files, encoder_status


def quiet(message):
    pass


def test_todays_release_layout_loads_the_encoder_strictly(tiny_model, tmp_path):
    save_official_layout(tiny_model, tmp_path, release=True)
    pipeline = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
    assert pipeline["ss_encoder_ckpt_path"] == "ss_encoder.ckpt" and pipeline["ss_encoder_config_path"] == "ss_encoder.yaml"
    assert yaml.safe_load((tmp_path / "ss_encoder.yaml").read_text())["channels"] == list(reversed(tiny_model.cfg.vae.channels))
    assert not (tmp_path / "ss_encoder.safetensors").exists()
    # as the official wrapper reads it: a plain fp16 state dict, torch.load(weights_only=True)
    raw = torch.load(tmp_path / "ss_encoder.ckpt", weights_only=True)
    assert raw.keys() == tiny_model.encoder.state_dict().keys() and raw["input_layer.weight"].dtype == torch.float16
    status = encoder_status(tmp_path)
    assert status.usable and status.checkpoint.name == "ss_encoder.ckpt"
    messages = []
    built = build_from_folder(tmp_path, preset="sam3d", log=messages.append)
    assert built.encoder is not None
    assert any("SS encoder: ss_encoder.ckpt" in m and "released weights: flow targets come from the encoder" in m
               for m in messages)
    for name, value in tiny_model.encoder.state_dict().items():
        assert torch.equal(built.encoder.state_dict()[name], value.half().float()), name
    occupancy = (torch.rand(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    targets = built.latent_targets(occupancy)
    assert targets["shape"].shape == (1, 8 ** 3, 8)


def test_older_snapshots_keep_their_placeholders_and_inversion(tiny_model, tmp_path):
    save_official_layout(tiny_model, tmp_path, release=True, encoder_released=False)
    assert yaml.safe_load((tmp_path / "pipeline.yaml").read_text())["ss_encoder_ckpt_path"] == "ss_encoder.safetensors"
    assert (tmp_path / "ss_encoder.safetensors").stat().st_size == 0
    assert encoder_status(tmp_path).state == "placeholder"
    assert build_from_folder(tmp_path, preset="sam3d", log=quiet).encoder is None
    # without pipeline.yaml naming the encoder, the file that is there is the one
    (tmp_path / "pipeline.yaml").write_text("ss_inference_steps: 25\n")
    assert component_files(tmp_path)["encoder"] == ("ss_encoder.yaml", "ss_encoder.safetensors")


@pytest.mark.parametrize("container", ["safetensors", "lightning"])
def test_the_encoder_reads_from_either_format(tiny_model, tmp_path, container):
    save_official_layout(tiny_model, tmp_path, release=True)
    state = {k: v.half() for k, v in tiny_model.encoder.state_dict().items()}
    if container == "safetensors":
        (tmp_path / "ss_encoder.ckpt").unlink()
        save_file(state, str(tmp_path / "ss_encoder.safetensors"))
        pipeline = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
        pipeline["ss_encoder_ckpt_path"] = "ss_encoder.safetensors"
        (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    else:  # weights inside a Lightning container, as the generator's file is
        torch.save(lightning_container(state, {"module": {}}), tmp_path / "ss_encoder.ckpt")
    built = build_from_folder(tmp_path, preset="sam3d", log=quiet)
    assert all(torch.equal(built.encoder.state_dict()[k], v.float()) for k, v in state.items())


def test_an_encoder_that_does_not_match_is_one_line(tiny_model, tmp_path):
    save_official_layout(tiny_model, tmp_path, release=True)
    state = {k: v.clone() for k, v in read_state_dict(tmp_path / "ss_encoder.ckpt").items()}  # not the mapped file
    del state["out_layer.2.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "ss_encoder.ckpt")
    with pytest.raises(CheckpointError) as info:
        build_from_folder(tmp_path, preset="sam3d", log=quiet)
    message = str(info.value)
    assert "\n" not in message and "ss_encoder.ckpt: the SS encoder does not match the model" in message
    assert "1 missing (first: out_layer.2.bias)" in message and "1 unexpected (first: extra.weight)" in message
    # sizes in ss_encoder.yaml that are not the decoder's mirror: refused before any weight is read
    document = yaml.safe_load((tmp_path / "ss_encoder.yaml").read_text())
    document["channels"] = [8, 16, 16, 32]
    (tmp_path / "ss_encoder.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=r"not the mirror of the decoder.*channels \[8, 16, 16, 32\]"):
        build_from_folder(tmp_path, preset="sam3d", log=quiet)


def released_generator_yaml() -> dict:
    """ss_generator.yaml in the released schema and sizes, with the sampler values of the released
    file's training run as public listings of it give them (ShortCut ``inference_steps`` 2,
    ``rescale_t`` 1.0; ClassifierFreeGuidanceWithExternalUnconditionalProbability ``strength`` 2.0,
    ``interval`` [0, 500])."""
    document = official_yaml_documents(get_preset("sam3d"), {})["ss_generator.yaml"]
    shortcut = document["module"]["generator"]["backbone"]
    shortcut.update(inference_steps=2, rescale_t=1.0)
    shortcut["reverse_fn"].update(strength=2.0, interval=[0, 500], _target_=(
        "sam3d_objects.model.backbone.generator.classifier_free_guidance."
        "ClassifierFreeGuidanceWithExternalUnconditionalProbability"))
    return document


def test_the_sampler_is_the_official_pipelines_not_the_generators_training_values(tmp_path):
    """The official InferencePipeline overrides the generator's settings with pipeline.yaml's ss_* keys,
    else its defaults (25 steps, rescale 3, guidance 7 over [0, 500])."""
    (tmp_path / "ss_generator.yaml").write_text(yaml.safe_dump(released_generator_yaml()))
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({
        "ss_generator_config_path": "ss_generator.yaml", "ss_generator_ckpt_path": "ss_generator.ckpt"}))
    config = get_preset("tiny")  # a preset whose own sampler differs (8 steps): the folder's pipeline wins
    apply_official_yaml(config, tmp_path)
    sampler = config.sampler
    assert (sampler.steps, sampler.rescale_t, sampler.cfg_strength, sampler.cfg_interval) == (25, 3.0, 7.0, (0.0, 500.0))
    done = subprocess.run([sys.executable, "-m", "sam3d_med.cli", "model-info", "--preset", "sam3d", "--config_dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sampler: 25 Euler steps, time rescale 3, guidance 7 over model time [0, 500]" in done.stdout
    assert "SS encoder: ss_encoder.ckpt absent: flow targets from inverting the released decoder" in done.stdout
    # pipeline.yaml's keys, where given, win; pointmap guidance, which the sampler lacks, is refused by name
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"ss_inference_steps": 12, "ss_cfg_strength": 5.0}))
    config = get_preset("sam3d")
    apply_official_yaml(config, tmp_path)
    assert (config.sampler.steps, config.sampler.cfg_strength, config.sampler.rescale_t) == (12, 5.0, 3.0)
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"ss_cfg_strength_pm": 1.0}))
    with pytest.raises(ConfigError, match="ss_cfg_strength_pm=1.0"):
        apply_official_yaml(get_preset("sam3d"), tmp_path)


def test_model_info_names_the_encoder_it_found(tiny_model, tmp_path):
    save_official_layout(tiny_model, tmp_path, release=True)
    done = subprocess.run([sys.executable, "-m", "sam3d_med.cli", "model-info", "--preset", "sam3d", "--config_dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "SS encoder: ss_encoder.ckpt (" in done.stdout and "released weights: flow targets from the encoder" in done.stdout
    assert "ss_encoder " in done.stdout  # its parameter count
