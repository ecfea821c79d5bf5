"""Training the U-Net baseline on the small phantom cache (tests/conftest.py ``cache_dir``), and its CLI."""

import numpy as np
import pytest
import torch

from sam3d_med.cli import main
from sam3d_med.data.dataset import load_manifest, split_cases
from sam3d_med.errors import InputError
from sam3d_med.model.unet_baseline import UNetBaseline, load_unet_baseline
from sam3d_med.train import unet_baseline as training
from sam3d_med.train.unet_baseline import train_unet, training_samples

# a tiny network on a 32^3 window of the 64^3 phantom grids
TINY = dict(side=32, channels=(4, 8), strides=(2,), num_res_units=0, progress=False, log=lambda m: None)


def test_samples_are_every_slice_and_class_of_the_training_cases(cache_dir):
    manifest = load_manifest(cache_dir)
    train_ids, val_ids = split_cases([c["case_id"] for c in manifest["cases"]], 0.1, 0)
    assert val_ids  # 3 cases: one held out, as in the LoRA run
    samples = training_samples(manifest, train_ids, 5)
    assert {case["case_id"] for case, _, _ in samples} == set(train_ids)
    assert {entry["axis"] for _, entry, _ in samples} == set(manifest["options"]["axes"])
    expected = sum(sum(1 for n in entry["class_pixel_counts"].values() if n >= 1)
                   for case in manifest["cases"] if case["case_id"] in train_ids for entry in case["slices"])
    assert len(samples) == expected
    assert all(entry["class_pixel_counts"][str(cls)] >= 1 for _, entry, cls in samples)
    assert {cls for _, _, cls in training_samples(manifest, train_ids, 2)} == {1, 2}


def test_training_reduces_the_loss_and_is_deterministic(cache_dir, tmp_path):
    runs = [train_unet(cache_dir, tmp_path / f"{name}.pt", steps=24, batch_size=2, lr=1e-2, seed=seed, **TINY)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    first, again, other = (run.training["losses"] for run in runs)
    assert first == again
    for key, value in runs[0].network.state_dict().items():
        assert torch.equal(value, runs[1].network.state_dict()[key]), key
    assert first != other
    assert np.mean(first[-5:]) < 0.85 * np.mean(first[:5]), first
    saved = load_unet_baseline(tmp_path / "a.pt")
    manifest = load_manifest(cache_dir)
    assert saved.train_case_ids == split_cases([c["case_id"] for c in manifest["cases"]], 0.1, 0)[0]
    assert saved.train_cache == str(cache_dir) and saved.side == 32 and saved.num_classes == 5
    assert saved.class_names == manifest["class_names"]
    summary = saved.training
    assert {"steps", "batch", "lr", "seed", "minutes", "final_loss"} <= set(summary)
    assert (summary["steps"], summary["batch"], summary["lr"], summary["seed"]) == (24, 2, 1e-2, 0)
    assert summary["completed"] and summary["final_loss"] == pytest.approx(np.mean(first[-20:]))


def interrupt_at_batch(monkeypatch, n: int):
    """Ctrl-C when the n-th batch is drawn; returns the real batch function."""
    calls = []
    original_batch = training._batch

    def interrupted(*args):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return original_batch(*args)

    monkeypatch.setattr(training, "_batch", interrupted)
    return original_batch


def test_saves_along_the_way_and_on_interruption(cache_dir, tmp_path, monkeypatch):
    saves = []
    original_save = UNetBaseline.save

    def spy(self, path):
        saves.append((self.training["steps"], self.training["completed"]))
        return original_save(self, path)

    monkeypatch.setattr(UNetBaseline, "save", spy)
    train_unet(cache_dir, tmp_path / "u.pt", steps=5, batch_size=1, save_every=2, **TINY)
    assert saves == [(2, False), (4, False), (5, True)]

    interrupt_at_batch(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train_unet(cache_dir, tmp_path / "v.pt", steps=10, batch_size=1, save_every=100, **TINY)
    partial = load_unet_baseline(tmp_path / "v.pt")
    assert partial.training["steps"] == 3 and not partial.training["completed"]


def test_cli_trains_and_writes_the_checkpoint(cache_dir, tmp_path, capsys):
    out = tmp_path / "runs" / "unet.pt"
    code = main(["train-unet", "--train_cache", str(cache_dir), "--out", str(out), "--steps", "2", "--batch_size", "1",
                 "--side", "32", "--device", "cpu", "--seed", "3", "--no_progress"])
    assert code == 0, capsys.readouterr().err
    model = load_unet_baseline(out)
    assert model.side == 32 and model.channels == (16, 32, 64, 128) and model.strides == (2, 2, 2)
    assert model.training["steps"] == 2 and model.training["seed"] == 3 and model.training["val_fraction"] == 0.1


@pytest.mark.parametrize("args, message", [
    (["--train_cache", "{tmp}/no_cache"], "cache folder does not exist"),
    (["--train_cache", "{cache}", "--side", "20"], "--side"),
    (["--train_cache", "{cache}", "--val_fraction", "1"], "--val_fraction"),
])
def test_cli_refuses_bad_input_in_one_line(cache_dir, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, cache=cache_dir) for a in args]
    code = main(["train-unet", *args, "--out", str(tmp_path / "u.pt"), "--no_progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("error:") and message in err, err
    assert not (tmp_path / "u.pt").exists()


def test_an_interrupted_training_resumes_to_the_same_weights_and_a_finished_one_is_not_redone(cache_dir, tmp_path,
                                                                                              monkeypatch):
    straight = train_unet(cache_dir, tmp_path / "straight.pt", steps=6, batch_size=1, save_every=100, **TINY)
    original_batch = interrupt_at_batch(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train_unet(cache_dir, tmp_path / "resumed.pt", steps=6, batch_size=1, save_every=100, **TINY)
    monkeypatch.setattr(training, "_batch", original_batch)
    resumed = train_unet(cache_dir, tmp_path / "resumed.pt", steps=6, batch_size=1, save_every=100, **TINY)
    assert resumed.training["losses"] == pytest.approx(straight.training["losses"], rel=1e-5)
    for a, b in zip(resumed.network.state_dict().values(), straight.network.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    stamp = (tmp_path / "resumed.pt").stat().st_mtime_ns
    interrupt_at_batch(monkeypatch, 1)  # a finished training draws no batch
    again = train_unet(cache_dir, tmp_path / "resumed.pt", steps=6, batch_size=1, save_every=100, **TINY)
    assert (tmp_path / "resumed.pt").stat().st_mtime_ns == stamp and again.training["completed"]
    with pytest.raises(InputError, match=r"other settings \(different: lr\)"):
        train_unet(cache_dir, tmp_path / "resumed.pt", steps=6, batch_size=1, save_every=100, **{**TINY, "lr": 0.5})
