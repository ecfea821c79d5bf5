import json

import numpy as np
import pytest
import torch

from sam3d_med.data.dataset import load_manifest
from sam3d_med.errors import ConfigError
from sam3d_med.model.config import VAEConfig
from sam3d_med.model.vae import SparseStructureDecoder, SparseStructureEncoder
from sam3d_med.train.latent_targets import (InversionSettings, case_occupancies, decoder_fingerprint,
                                            encode_occupancy, ensure_latent_targets, invert_decoder, resolve_source,
                                            round_trip_summary)


def small_decoder(seed=0, channels=(16, 8, 4)):
    """A decoder of the official structure (16^3 x 8 latent -> 64^3) with few channels, its
    zero-initialised convolutions perturbed so that it is not the identity."""
    torch.manual_seed(seed)
    return perturbed(SparseStructureDecoder(VAEConfig(channels=list(channels), num_res_blocks=1, num_res_blocks_middle=1)))


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in eval mode with its zero-initialised weights drawn small (not the identity)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return module.eval()


def test_inversion_recovers_shapes_the_decoder_can_make():
    """Occupancies decoded from known latents (about 5 % of the volume, like a heart structure):
    inversion finds latents that decode to them again."""
    decoder = small_decoder()
    known = torch.randn(2, 8, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        decoder.out_layer[2].bias -= torch.quantile(decoder(known)[0].flatten(), 0.95)
        truth = (decoder(known) > 0).float()
    assert 0.02 < float(truth.mean()) < 0.1
    settings = InversionSettings(steps=30, learning_rate=0.1, target_dice=0.999, init="zero")  # 100 steps: ~0.5
    weight = decoder.input_layer.weight.clone()
    latents, dice = invert_decoder(decoder, truth, settings, (8, 16, 16, 16))
    assert latents.shape == (2, 8, 16, 16, 16) and dice.shape == (2,)
    with torch.no_grad():
        again = (decoder(latents) > 0).float()
    measured = 2 * (again * truth).flatten(1).sum(1) / (again + truth).flatten(1).sum(1)
    assert torch.allclose(measured, dice) and bool((dice > 0.3).all()), dice
    assert torch.equal(decoder.input_layer.weight, weight) and decoder.input_layer.weight.requires_grad
    # one step evaluates z = 0 only: the optimised latents must do much better than that
    zero, zero_dice = invert_decoder(decoder, truth, InversionSettings(steps=1, init="zero"), (8, 16, 16, 16))
    assert bool((dice > zero_dice + 0.2).all()), (dice, zero_dice)


def test_inversion_from_a_start_that_already_decodes_to_the_shape_keeps_it():
    """z0 = the latent that made the occupancy: its round trip is perfect, so it is the target as is."""
    decoder = small_decoder()
    known = torch.randn(2, 8, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        truth = (decoder(known) > 0).float()
    latents, dice = invert_decoder(decoder, truth, InversionSettings(steps=5), (8, 16, 16, 16), start=known)
    assert torch.equal(latents, known) and torch.allclose(dice, torch.ones(2))


def test_targets_are_cached_per_case_resumable_and_reported(cache_dir, tmp_path):
    manifest = load_manifest(cache_dir)
    cases = manifest["cases"][:2]
    decoder = small_decoder(channels=(8, 4, 4))
    settings = InversionSettings(steps=3, batch_size=4, init="zero")
    folder = ensure_latent_targets(cache_dir, cases, decoder, settings, torch.device("cpu"), (8, 16, 16, 16), 64,
                                   frame="volume", progress=False)
    assert folder.parent.name == "latent_targets" and (folder / "settings.json").is_file()
    identity = json.loads((folder / "settings.json").read_text())
    assert identity["decoder_sha256"] == decoder_fingerprint(decoder) and identity["settings"]["steps"] == 3
    sdf = np.load(cache_dir / cases[0]["sdf_path"])
    latents = np.load(folder / f"{cases[0]['case_id']}.npy")
    record = json.loads((folder / f"{cases[0]['case_id']}.json").read_text())
    assert latents.shape == (sdf.shape[0], 8, 16, 16, 16) and len(record["dice"]) == sdf.shape[0]
    for k in range(sdf.shape[0]):  # a class present in the case has a latent and a round-trip Dice
        assert (record["dice"][k] is not None) == bool((sdf[k] < 0).any())
    # a re-run computes nothing; a removed case record is redone
    stamp = (folder / f"{cases[1]['case_id']}.npy").stat().st_mtime_ns
    (folder / f"{cases[0]['case_id']}.json").unlink()
    ensure_latent_targets(cache_dir, cases, decoder, settings, torch.device("cpu"), (8, 16, 16, 16), 64,
                          frame="volume", progress=False)
    assert (folder / f"{cases[0]['case_id']}.json").is_file()
    assert (folder / f"{cases[1]['case_id']}.npy").stat().st_mtime_ns == stamp
    # other decoder weights, settings or frame: another folder
    other = ensure_latent_targets(cache_dir, cases[:1], small_decoder(seed=1, channels=(8, 4, 4)), settings,
                                  torch.device("cpu"), (8, 16, 16, 16), 64, frame="volume", progress=False)
    assert other != folder
    cubes = ensure_latent_targets(cache_dir, cases[:1], decoder, settings, torch.device("cpu"), (8, 16, 16, 16), 64,
                                  frame="object", progress=False)
    assert cubes != folder and json.loads((cubes / "settings.json").read_text())["frame"] == "object"
    cube_occupancy = case_occupancies(cache_dir, cases[0], "object", 64)
    assert cube_occupancy.shape == (sdf.shape[0], 64, 64, 64)
    for k in range(sdf.shape[0]):  # each present class fills a good part of its own cube
        assert (0.05 < cube_occupancy[k].mean() < 0.7) == bool((sdf[k] < 0).any())
    line, worst = round_trip_summary(folder, cases, {1: "left_atrium"})
    assert 0 <= worst <= 1
    assert line.startswith("round trip, Dice of decoder(target latent) vs true occupancy") and "left_atrium" in line


def small_encoder(seed=0, channels=(8, 4, 4)):
    """The mirror of ``small_decoder`` (64^3 -> 16^3 x 8), perturbed likewise."""
    torch.manual_seed(seed)
    return perturbed(SparseStructureEncoder(VAEConfig(channels=list(channels), num_res_blocks=1, num_res_blocks_middle=1)))


def test_encoder_targets_are_its_posterior_means_refined_where_the_round_trip_is_poor(cache_dir):
    manifest = load_manifest(cache_dir)
    case = manifest["cases"][0]
    decoder, encoder = small_decoder(channels=(8, 4, 4)), small_encoder()
    shape = (8, 16, 16, 16)
    # every round trip accepted: the targets are exactly the encoder's means, nothing refined
    accept = InversionSettings(steps=4, batch_size=3, target_dice=0.0)
    folder = ensure_latent_targets(cache_dir, [case], decoder, accept, torch.device("cpu"), shape, 64, frame="object",
                                   encoder=encoder, progress=False)
    identity = json.loads((folder / "settings.json").read_text())
    assert identity["source"] == "encoder" and identity["encoder_sha256"] == decoder_fingerprint(encoder)
    assert "init" not in identity["settings"] and "generator" not in identity
    occupancy = torch.from_numpy(case_occupancies(cache_dir, case, "object", 64)).float()
    latents = np.load(folder / f"{case['case_id']}.npy")
    record = json.loads((folder / f"{case['case_id']}.json").read_text())
    present = [k for k in range(occupancy.shape[0]) if occupancy[k].any()]
    means = encode_occupancy(encoder, occupancy[present][:, None])
    assert np.allclose(latents[present], means.numpy(), atol=1e-6)
    assert means.shape == (len(present), *shape)
    assert [record["refined"][k] for k in present] == [False] * len(present)
    assert [record["dice"][k] for k in present] == [record["encoder_dice"][k] for k in present]
    # a round trip below target_dice: refined by inversion from the encoder's mean, never worse than it
    strict = InversionSettings(steps=4, batch_size=3, target_dice=1.01)
    refined = ensure_latent_targets(cache_dir, [case], decoder, strict, torch.device("cpu"), shape, 64, frame="object",
                                    encoder=encoder, progress=False)
    assert refined != folder
    record = json.loads((refined / f"{case['case_id']}.json").read_text())
    assert all(record["refined"][k] for k in present)
    assert all(record["dice"][k] >= record["encoder_dice"][k] for k in present)
    assert not np.allclose(np.load(refined / f"{case['case_id']}.npy")[present], means.numpy())
    line, _ = round_trip_summary(refined, [case], {})
    assert "encoder alone" in line and "refined 1" in line
    # another encoder, or the shell instead of the solid: other targets
    other = ensure_latent_targets(cache_dir, [case], decoder, accept, torch.device("cpu"), shape, 64, frame="object",
                                  encoder=small_encoder(seed=1), progress=False)
    shells = ensure_latent_targets(cache_dir, [case], decoder, accept, torch.device("cpu"), shape, 64, frame="object",
                                   encoder=encoder, occupancy="surface", progress=False)
    assert len({folder, other, shells}) == 3
    assert json.loads((shells / "settings.json").read_text())["occupancy"] == "surface"


def test_the_source_setting():
    assert resolve_source("auto", has_encoder=True) == "encoder"
    assert resolve_source("auto", has_encoder=False) == "inversion"
    assert resolve_source("inversion", has_encoder=True) == "inversion"
    with pytest.raises(ConfigError, match="latent_targets.source=encoder but checkpoints/hf has no usable SS encoder"):
        resolve_source("encoder", has_encoder=False, where="checkpoints/hf")
    with pytest.raises(ConfigError, match="must be one of auto, encoder, inversion"):
        resolve_source("decoder", has_encoder=True)
