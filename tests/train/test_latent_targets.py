import json

import numpy as np
import torch

from sam3d_med.data.dataset import load_manifest
from sam3d_med.model.config import VAEConfig
from sam3d_med.model.vae import SparseStructureDecoder
from sam3d_med.train.latent_targets import (InversionSettings, case_occupancies, decoder_fingerprint,
                                            ensure_latent_targets, invert_decoder, round_trip_summary)


def small_decoder(seed=0, channels=(16, 8, 4)):
    """A decoder of the official structure (16^3 x 8 latent -> 64^3) with few channels, its
    zero-initialised convolutions perturbed so that it is not the identity."""
    torch.manual_seed(seed)
    decoder = SparseStructureDecoder(VAEConfig(channels=list(channels), num_res_blocks=1, num_res_blocks_middle=1))
    with torch.no_grad():
        for p in decoder.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return decoder.eval()


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
