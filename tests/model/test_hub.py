import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sam3d_med.model.hub import DownloadError, download_checkpoints, files_named_in_pipeline, verify_checkpoint_folder
from sam3d_med.model.hub_standin import HubStub

REPO = "facebook/sam-3d-objects"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "download_hf_checkpoints.py"


def official_like_files(encoder: bool = False) -> dict[str, bytes]:
    """Small files in the layout of the official repository (under checkpoints/): a snapshot from
    before 2026-06-01 with its 0-byte encoder placeholders, or (``encoder``) today's release with
    ``ss_encoder.ckpt`` and its YAML, named so by pipeline.yaml."""
    encoder_file = "ss_encoder.ckpt" if encoder else "ss_encoder.safetensors"
    pipeline = {
        "ss_generator_config_path": "ss_generator.yaml", "ss_generator_ckpt_path": "ss_generator.ckpt",
        "ss_decoder_config_path": "ss_decoder.yaml", "ss_decoder_ckpt_path": "ss_decoder.ckpt",
        "ss_encoder_config_path": "ss_encoder.yaml", "ss_encoder_ckpt_path": encoder_file,
        "slat_generator_config_path": "slat_generator.yaml", "slat_generator_ckpt_path": "slat_generator.ckpt",
        "ss_inference_steps": 25,
    }
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.arange(300_000, dtype=torch.float32)}}, buf)
    generator = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"conv.weight": torch.ones(3)}, buf)
    files = {
        "pipeline.yaml": yaml.safe_dump(pipeline).encode(),
        "ss_generator.yaml": b"model: {depth: 24}\n", "ss_generator.ckpt": generator,
        "ss_decoder.yaml": b"model: {channels: [512, 128, 32]}\n", "ss_decoder.ckpt": buf.getvalue(),
        "ss_encoder.yaml": b"channels: [32, 128, 512]\n" if encoder else b"",
        encoder_file: buf.getvalue() if encoder else b"",
        "slat_generator.yaml": b"model: {}\n", "slat_generator.ckpt": buf.getvalue(),
    }
    return {f"checkpoints/{k}": v for k, v in files.items()}


@pytest.fixture(autouse=True)
def isolated_hub_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_pipeline_names_the_files():
    pipeline = yaml.safe_load(official_like_files()["checkpoints/pipeline.yaml"])
    assert sorted(files_named_in_pipeline(pipeline, everything=False)) == sorted([
        "ss_generator.yaml", "ss_generator.ckpt", "ss_decoder.yaml", "ss_decoder.ckpt",
        "ss_encoder.yaml", "ss_encoder.safetensors"])
    assert "slat_generator.ckpt" in files_named_in_pipeline(pipeline, everything=True)
    # a path with a folder prefix keeps only the file name; an absent component falls back
    assert files_named_in_pipeline({"ss_generator_ckpt_path": "${ckpt_dir}/gen.ckpt"}, False)[0] == "gen.ckpt"


def test_download_with_token_resumes_an_interrupted_transfer_and_verifies(tmp_path, monkeypatch):
    # The client resumes from the last chunk it stored: small chunks make that point fall inside
    # this small file (real checkpoints are many 10 MB chunks long).
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    files = official_like_files()
    size = len(files["checkpoints/ss_generator.ckpt"])
    with HubStub(REPO, files, token="hf_secret", break_after={"checkpoints/ss_generator.ckpt": size // 3}) as hub:
        out = tmp_path / "checkpoints" / "hf"
        result = download_checkpoints(REPO, out, token="hf_secret", endpoint=hub.endpoint, log=lambda m: None)
        paths = result.files
        ranges = [r for (method, path, r) in hub.requests if method == "GET" and path.endswith("ss_generator.ckpt")]
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))  # the second request resumed
    assert ranges[0] is None and 0 < resumed_at <= size // 3
    assert sorted(p.name for p in paths) == sorted(["pipeline.yaml", "ss_generator.yaml", "ss_generator.ckpt",
                                                    "ss_decoder.yaml", "ss_decoder.ckpt", "ss_encoder.yaml",
                                                    "ss_encoder.safetensors"])
    for p in paths:
        assert p.read_bytes() == files[f"checkpoints/{p.name}"]
    assert not (out / "slat_generator.ckpt").exists()
    assert sorted(result.placeholders) == ["ss_encoder.safetensors", "ss_encoder.yaml"]
    assert "0-byte placeholders in this snapshot: ss_encoder." in result.summary()
    assert ("SS encoder: ss_encoder.safetensors is a 0-byte placeholder (a snapshot or mirror from before Meta "
            "released the encoder on 2026-06-01): no usable encoder") in result.summary()
    info = json.loads((out / "download_info.json").read_text())
    assert sorted(info["placeholders"]) == ["ss_encoder.safetensors", "ss_encoder.yaml"] and info["encoder"] == "placeholder"
    loaded = torch.load(out / "ss_generator.ckpt", weights_only=True)
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(300_000, dtype=torch.float32))


def test_todays_release_brings_its_encoder_and_says_it_is_usable(tmp_path):
    """pipeline.yaml names ss_encoder.ckpt (the release since 2026-06-01): fetched, verified, reported."""
    files = official_like_files(encoder=True)
    with HubStub(REPO, files) as hub:
        result = download_checkpoints(REPO, tmp_path, endpoint=hub.endpoint, log=lambda m: None)
    assert sorted(p.name for p in result.files) == sorted(["pipeline.yaml", "ss_generator.yaml", "ss_generator.ckpt",
                                                           "ss_decoder.yaml", "ss_decoder.ckpt", "ss_encoder.yaml",
                                                           "ss_encoder.ckpt"])
    assert result.placeholders == [] and "7 files verified" in result.summary()
    assert "SS encoder: ss_encoder.ckpt (0.0 MB), released weights: usable; training takes its flow targets from " \
           "the encoder" in result.summary()
    assert json.loads((tmp_path / "download_info.json").read_text())["encoder"] == "released"
    # a damaged encoder is a failed verification, as any other checkpoint
    files["checkpoints/ss_encoder.ckpt"] = b"not a checkpoint"
    with HubStub(REPO, files) as hub, pytest.raises(DownloadError, match="ss_encoder.ckpt: not a torch checkpoint"):
        download_checkpoints(REPO, tmp_path / "damaged", endpoint=hub.endpoint, log=lambda m: None)
    # a revision without the encoder's files (pipeline.yaml names them): the stage runs without, said so
    del files["checkpoints/ss_encoder.ckpt"], files["checkpoints/ss_encoder.yaml"]
    with HubStub(REPO, files) as hub:
        result = download_checkpoints(REPO, tmp_path / "without", endpoint=hub.endpoint, log=lambda m: None)
    assert sorted(result.absent) == ["ss_encoder.ckpt", "ss_encoder.yaml"]
    assert "not in the repository at this revision: ss_encoder.yaml, ss_encoder.ckpt" in result.summary()
    assert "SS encoder: ss_encoder.ckpt absent: no usable encoder" in result.summary()


@pytest.mark.e2e
def test_a_download_stopped_with_ctrl_c_continues_from_the_bytes_received(tmp_path):
    """Ctrl-C during ss_generator.ckpt (a throttled loopback Hub that honours Range and counts what it
    sends): exit 130, the bytes received kept; the re-run asks for the rest only (Range), and the file
    is whole."""
    files = official_like_files()
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.randn(9 << 20, generator=torch.Generator().manual_seed(0))}}, buffer)
    files["checkpoints/ss_generator.ckpt"] = generator = buffer.getvalue()  # 36 MB: several 10 MB transfer chunks
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    args = [sys.executable, str(SCRIPT), "--repo", REPO, "--out", "checkpoints/hf"]
    name = "checkpoints/ss_generator.ckpt"
    with HubStub(REPO, files, bytes_per_second=len(generator) / 3) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        first = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        staging = tmp_path / "checkpoints" / "hf" / ".hf_download"

        def received() -> int:  # what the client has written so far (it writes whole 10 MB chunks)
            return sum(p.stat().st_size for p in staging.rglob("ss_generator.ckpt.*.part")) if staging.is_dir() else 0

        deadline = time.time() + 60
        while received() < 10 << 20 and time.time() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130 and "run the same command again to resume" in err and "Traceback" not in err
        sent_before = -1
        while sent_before != hub.bytes_served[name]:  # the server's last writes to the closed connection
            sent_before = hub.bytes_served[name]
            time.sleep(0.3)
        kept = list(staging.rglob("ss_generator.ckpt.*.part"))
        assert len(kept) == 1 and kept[0].stat().st_size >= 10 << 20
        hub.bytes_per_second = None
        second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "ss_generator.ckpt: continuing from" in second.stdout
    ranges = [r for method, path, r in hub.requests if method == "GET" and path.endswith(name)]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    resumed_at = int(ranges[1][len("bytes="):].rstrip("-"))
    assert hub.bytes_served[name] - sent_before == len(generator) - resumed_at  # only the rest was sent again
    assert (tmp_path / "checkpoints" / "hf" / "ss_generator.ckpt").read_bytes() == generator
    assert not list((tmp_path / "checkpoints" / "hf" / ".hf_download").rglob("*.part"))


def test_rerun_fetches_nothing_again(tmp_path):
    with HubStub(REPO, official_like_files()) as hub:
        download_checkpoints(REPO, tmp_path, endpoint=hub.endpoint, log=lambda m: None)
        first_gets = sum(1 for m, _, _ in hub.requests if m == "GET")
        download_checkpoints(REPO, tmp_path, endpoint=hub.endpoint, log=lambda m: None)
        assert sum(1 for m, _, _ in hub.requests if m == "GET") == first_gets
    assert not list(tmp_path.rglob("*.lock"))


def test_a_lock_another_download_holds_is_kept(tmp_path):
    from filelock import FileLock

    from sam3d_med.model.hub import remove_unheld_locks

    held, stale = tmp_path / "a.lock", tmp_path / "sub" / "b.lock"
    stale.parent.mkdir()
    stale.touch()
    with FileLock(str(held)):
        assert remove_unheld_locks(tmp_path) == 1
        assert held.exists() and not stale.exists()


@pytest.mark.parametrize("token, granted, expected", [
    # a gated repository asked without a token: the Hub answers 401 with X-Error-Code GatedRepo
    (None, True, r"refused facebook/sam-3d-objects \(HTTP 401\): no token was sent \(not logged in\)"),
    (None, False, r"refused facebook/sam-3d-objects \(HTTP 401\): no token was sent \(not logged in\)"),
    ("hf_wrong", True, r"refused the token for facebook/sam-3d-objects \(HTTP 401: invalid or expired token\)"),
    ("hf_secret", False, r"gated and this token has not been granted access \(HTTP 403\)"),
])
def test_hub_refusals_name_what_happened(tmp_path, token, granted, expected):
    with HubStub(REPO, official_like_files(), token="hf_secret", granted=granted) as hub:
        with pytest.raises(DownloadError, match=expected) as info:
            download_checkpoints(REPO, tmp_path / "a", token=token, endpoint=hub.endpoint, log=lambda m: None)
    message = str(info.value)
    assert "\n" not in message and "request access at" in message and "HF_TOKEN" in message
    assert ("HTTP 403" in message) == (token == "hf_secret")


def test_missing_file_gives_a_clear_message(tmp_path):
    files = official_like_files()
    del files["checkpoints/ss_decoder.ckpt"]
    with HubStub(REPO, files) as hub:
        with pytest.raises(DownloadError, match="has no file ss_decoder.ckpt"):
            download_checkpoints(REPO, tmp_path / "c", endpoint=hub.endpoint, log=lambda m: None)
    # a failed attempt leaves no lock files behind; the files finished before it stay recorded
    assert not list(tmp_path.rglob("*.lock")) and list((tmp_path / "c" / ".hf_download").rglob("pipeline.yaml.json"))


def test_no_network_gives_one_clear_message(tmp_path, monkeypatch):
    import huggingface_hub.utils._http as hf_http
    monkeypatch.setattr(hf_http.time, "sleep", lambda s: None)  # the client's retry back-off: 23 s of waiting
    with HubStub(REPO, {}) as hub:
        closed = hub.endpoint  # nothing listens there once the stub has stopped
    with pytest.raises(DownloadError, match="cannot reach the Hugging Face Hub"):
        download_checkpoints(REPO, tmp_path, endpoint=closed, log=lambda m: None)


def test_verification_finds_corrupt_files(tmp_path):
    (tmp_path / "a.ckpt").write_bytes(b"definitely not a checkpoint")
    (tmp_path / "b.safetensors").write_bytes(b"\x00\x01")
    (tmp_path / "c.yaml").write_text("- a list\n")
    (tmp_path / "e.safetensors").write_bytes(b"")
    problems = verify_checkpoint_folder(tmp_path, ["a.ckpt", "b.safetensors", "c.yaml", "d.ckpt", "e.safetensors"])
    assert [p.split(":")[0] for p in problems] == ["a.ckpt", "b.safetensors", "c.yaml", "d.ckpt", "e.safetensors"]
    # a 0-byte file that the stage does not need is a placeholder, not a problem
    assert verify_checkpoint_folder(tmp_path, ["e.safetensors"], required=[]) == []


def test_a_zero_byte_file_the_stage_needs_fails_the_download(tmp_path):
    files = official_like_files()
    files["checkpoints/ss_decoder.ckpt"] = b""
    with HubStub(REPO, files) as hub:
        with pytest.raises(DownloadError, match=r"ss_decoder.ckpt: 0-byte file \(the sparse-structure stage needs it\)"):
            download_checkpoints(REPO, tmp_path, endpoint=hub.endpoint, log=lambda m: None)


@pytest.mark.e2e
def test_tutorial_command_against_the_stub(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    with HubStub(REPO, official_like_files(), token="hf_secret") as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        args = [sys.executable, str(SCRIPT), "--repo", REPO, "--out", "checkpoints/hf"]
        denied = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert denied.returncode == 1 and "Traceback" not in denied.stderr
        assert denied.stderr.strip().splitlines()[-1].startswith("error: the Hub refused facebook/sam-3d-objects")
        env["HF_TOKEN"] = "hf_secret"
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "5 files verified in checkpoints/hf" in done.stdout
    assert "0-byte placeholders in this snapshot: ss_encoder.yaml, ss_encoder.safetensors" in done.stdout
    assert "inverting the released decoder" in done.stdout
    assert (tmp_path / "checkpoints" / "hf" / "ss_encoder.safetensors").stat().st_size == 0


@pytest.mark.e2e
def test_serve_release_command_serves_a_folder_to_the_download(tmp_path):
    """``sam3d-med serve-release`` (the demo's stand-in Hub) serves a folder that the real download reads."""
    folder = tmp_path / "release"
    for name, data in official_like_files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    endpoint_file = tmp_path / "endpoint"
    server = subprocess.Popen([sys.executable, "-m", "sam3d_med.cli", "serve-release", str(folder),
                               "--endpoint_file", str(endpoint_file)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if endpoint_file.is_file():
                break
            time.sleep(0.05)
        endpoint = endpoint_file.read_text().strip()
        result = download_checkpoints(REPO, tmp_path / "out", endpoint=endpoint, log=lambda m: None)
        assert len(result.files) == 7 and sorted(result.placeholders) == ["ss_encoder.safetensors", "ss_encoder.yaml"]
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0 and f"at {endpoint}" in out
