"""Download of the official SAM 3D Objects weights and configs from the Hugging Face Hub (step 1).

The Hub repository ``facebook/sam-3d-objects`` keeps its files under ``checkpoints/``; the official
instructions move that folder's content to ``checkpoints/hf``. We write the same flat layout into
``out_dir`` (``out_dir/pipeline.yaml``, ``out_dir/ss_generator.ckpt``, ...).

``pipeline.yaml`` is fetched first: it names each component's config and checkpoint
(``<component>_config_path``, ``<component>_ckpt_path``), so the files fetched are the ones the
pipeline really uses. By default only the sparse-structure stage (generator, decoder, encoder),
which is what sam3d-med fine-tunes; ``everything=True`` fetches every file pipeline.yaml names.

Files are fetched with ``huggingface_hub.hf_hub_download`` into ``out_dir/.hf_download`` (its
metadata makes re-runs skip finished files, and an interrupted transfer resumes from the partial
file), then hard-linked (copied where links fail) into ``out_dir``. The folder is verified at the end.

The SS encoder is fetched as pipeline.yaml names it: today's release holds ``ss_encoder.ckpt`` and
``ss_encoder.yaml`` (Meta released the encoder on 2026-06-01); older snapshots and mirrors hold 0-byte
placeholders (``ss_encoder.safetensors``, ``ss_encoder.yaml``), which are reported as such, not as a
failed download. The command succeeds when every file the sparse-structure stage needs (generator and
decoder, their YAML, pipeline.yaml) is there, and its summary says whether a usable encoder is: with
one, training takes its flow targets from the encoder; without, from inverting the released decoder.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import Sam3dMedError
from ..io.atomic import atomic_path, atomic_write_json
from .release_files import PIPELINE_FILE, RELEASE_FILES, encoder_status, named_in_pipeline

DEFAULT_REPO = "facebook/sam-3d-objects"
REPO_SUBFOLDER = "checkpoints"
SS_COMPONENTS = ("ss_generator", "ss_decoder", "ss_encoder")
REQUIRED_COMPONENTS = ("ss_generator", "ss_decoder")  # what fine-tuning and sampling cannot do without
# Used only for components that pipeline.yaml does not name (the names of the official release).
FALLBACK_FILES = {f"ss_{component}": files for component, files in RELEASE_FILES.items()}
STAGING_DIR = ".hf_download"
INFO_FILE = "download_info.json"


class DownloadError(Sam3dMedError):
    """The download could not be done; the message says why and what to do."""


def _files_by_component(pipeline: dict) -> dict[str, list[str]]:
    """component -> file names (basenames) that pipeline.yaml names for it (config first)."""
    return {component: [kinds[k] for k in ("config", "ckpt") if k in kinds]
            for component, kinds in named_in_pipeline(pipeline).items()}


def files_named_in_pipeline(pipeline: dict, everything: bool) -> list[str]:
    """File names of the configs and checkpoints to fetch: the sparse-structure stage's (each
    component pipeline.yaml does not name falls back to the release's names), or with
    ``everything`` every file pipeline.yaml names."""
    named = _files_by_component(pipeline)
    components = sorted(set(named) | set(SS_COMPONENTS)) if everything else list(SS_COMPONENTS)
    files = []
    for component in components:
        files += named.get(component) or list(FALLBACK_FILES.get(component, ()))
    return list(dict.fromkeys(files))


def required_files(pipeline: dict) -> list[str]:
    """The files without which the sparse-structure stage cannot run (pipeline.yaml included)."""
    named = _files_by_component(pipeline)
    return [PIPELINE_FILE] + [name for component in REQUIRED_COMPONENTS
                              for name in (named.get(component) or FALLBACK_FILES[component])]


def _explain_hub_error(exc: Exception, repo_id: str, endpoint: str, filename: str) -> DownloadError:
    """Turn a huggingface_hub/httpx exception into one actionable line."""
    from huggingface_hub import errors as hf_errors

    access = (f"request access at {endpoint}/{repo_id} (log in, accept the licence), then authenticate with "
              f"`hf auth login`, the HF_TOKEN environment variable, or --token")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf_errors.GatedRepoError) or status == 403:
        return DownloadError(f"{repo_id} is gated and this token has not been granted access (HTTP 403): {access}")
    if status == 401 or isinstance(exc, hf_errors.RepositoryNotFoundError):
        return DownloadError(f"the Hub refused {repo_id} without a valid token (HTTP {status or 401}): {access}")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return DownloadError(f"{repo_id}: revision not found ({exc.__class__.__name__})")
    if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
        return DownloadError(f"{repo_id} has no file {filename} at this revision")
    if isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, ConnectionError, OSError)) \
            or exc.__class__.__module__.startswith("httpx"):
        return DownloadError(
            f"cannot reach the Hugging Face Hub at {endpoint} while fetching {filename} (no network, a proxy, or "
            f"HF_HUB_OFFLINE set): download on a machine with access and copy the folder, or set HF_ENDPOINT to a mirror")
    return DownloadError(f"download of {filename} from {repo_id} failed: {exc.__class__.__name__}: {exc}")


def _fetch(repo_id: str, filename: str, staging: Path, revision: str, token: str | None, endpoint: str,
           optional: bool = False) -> Path | None:
    """The downloaded file; None for an ``optional`` file the repository does not have."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf_errors

    try:
        path = hf_hub_download(repo_id, f"{REPO_SUBFOLDER}/{filename}", revision=revision, local_dir=staging,
                               token=token, endpoint=endpoint)
    except Exception as exc:  # every failure becomes one line; huggingface_hub raises many types
        if optional and isinstance(exc, hf_errors.RemoteEntryNotFoundError):
            return None
        raise _explain_hub_error(exc, repo_id, endpoint, filename) from None
    return Path(path)


def _place(source: Path, target: Path) -> None:
    """Put the downloaded file at ``target`` without a second copy where the filesystem allows."""
    if target.exists() and os.path.samefile(source, target):
        return
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def verify_checkpoint_folder(folder: str | Path, filenames: list[str], required: list[str] | None = None) -> list[str]:
    """Problems found in ``folder`` for the expected files (empty list: all good).

    YAML must parse to a mapping; ``.ckpt``/``.pt`` must be a torch zip archive or a pickle;
    ``.safetensors`` must have a readable header. A 0-byte file is a problem only if it is in
    ``required`` (default: every file); otherwise it is a placeholder (see ``placeholders``)."""
    folder = Path(folder)
    required = filenames if required is None else required
    problems = []
    for name in filenames:
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        if path.stat().st_size == 0:
            if name in required:
                problems.append(f"{name}: 0-byte file (the sparse-structure stage needs it)")
            continue
        try:
            if name.endswith((".yaml", ".yml")):
                if not isinstance(yaml.safe_load(path.read_text()), dict):
                    problems.append(f"{name}: not a YAML mapping")
            elif name.endswith((".ckpt", ".pt", ".pth")):
                with open(path, "rb") as fh:
                    head = fh.read(2)
                if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
                    problems.append(f"{name}: not a torch checkpoint (neither zip archive nor pickle)")
            elif name.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(path), framework="numpy") as fh:
                    fh.keys()
        except Exception as exc:  # a corrupt file of any kind is reported, not raised
            problems.append(f"{name}: unreadable ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})")
    return problems


@dataclass
class DownloadResult:
    folder: Path
    files: list[Path] = field(default_factory=list)  # every file placed in ``folder``
    placeholders: list[str] = field(default_factory=list)  # 0-byte files the repository holds
    absent: list[str] = field(default_factory=list)  # optional files pipeline.yaml names that the repository lacks

    def summary(self) -> str:
        """What the user needs to know, in a few lines: what was verified, and whether a usable SS
        encoder is there (and so where training's flow targets will come from)."""
        verified = len(self.files) - len(self.placeholders)
        lines = [f"{verified} files verified in {self.folder}"]
        if self.placeholders:
            lines.append(f"0-byte placeholders in this snapshot: {', '.join(self.placeholders)}")
        if self.absent:
            lines.append(f"not in the repository at this revision: {', '.join(self.absent)}")
        encoder = encoder_status(self.folder)
        if encoder.usable:
            lines.append(f"{encoder.describe()}: usable; training takes its flow targets from the encoder "
                         f"(latent_targets.source=auto)")
        else:
            lines.append(f"{encoder.describe()}: no usable encoder, so training derives its flow targets by "
                         f"inverting the released decoder (automatic; cached beside the preprocessing cache, with "
                         f"the round-trip Dice printed); a snapshot from 2026-06-01 on has the encoder")
        return "\n".join(lines)


def download_checkpoints(repo_id: str, out_dir: str | Path, *, revision: str = "main", token: str | None = None,
                         endpoint: str | None = None, everything: bool = False, log=print) -> DownloadResult:
    """Fetch pipeline.yaml and the files it names into ``out_dir``; the result lists them and the
    placeholders among them."""
    from huggingface_hub import constants

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    out_dir = Path(out_dir)
    staging = out_dir / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    try:
        return _download_into(repo_id, out_dir, staging, revision, token, endpoint, everything, log)
    finally:
        remove_unheld_locks(staging)


def remove_unheld_locks(staging: Path) -> int:
    """Delete huggingface_hub's ``*.lock`` files under ``staging`` that no process holds (it leaves
    them behind, after a failure too); the partial transfers and metadata stay, for resuming."""
    from filelock import FileLock, Timeout

    removed = 0
    for path in staging.rglob("*.lock"):
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # another download into this folder is running
        try:
            path.unlink(missing_ok=True)
            removed += 1
        finally:
            lock.release()
    return removed


def _download_into(repo_id: str, out_dir: Path, staging: Path, revision: str, token: str | None, endpoint: str,
                   everything: bool, log) -> DownloadResult:
    pipeline_path = _fetch(repo_id, PIPELINE_FILE, staging, revision, token, endpoint)
    try:
        pipeline = yaml.safe_load(pipeline_path.read_text())
    except yaml.YAMLError as exc:
        raise DownloadError(f"{repo_id}/{PIPELINE_FILE} is not valid YAML ({exc.__class__.__name__})") from None
    wanted = [PIPELINE_FILE] + files_named_in_pipeline(pipeline, everything)
    log(f"fetching {len(wanted)} files from {repo_id}@{revision}: {', '.join(wanted)}")
    result = DownloadResult(out_dir)
    required = required_files(pipeline)
    for name in wanted:
        source = pipeline_path if name == PIPELINE_FILE else \
            _fetch(repo_id, name, staging, revision, token, endpoint, optional=name not in required)
        if source is None:  # an optional file (the encoder's) that this revision does not hold
            result.absent.append(name)
            continue
        _place(source, out_dir / name)
        result.files.append(out_dir / name)
    problems = verify_checkpoint_folder(out_dir, [p.name for p in result.files], required)
    if problems:
        raise DownloadError(f"{out_dir}: downloaded files failed verification: " + "; ".join(problems))
    result.placeholders = [p.name for p in result.files if p.stat().st_size == 0]
    atomic_write_json(out_dir / INFO_FILE, {
        "repo_id": repo_id, "revision": revision, "endpoint": endpoint,
        "files": {p.name: p.stat().st_size for p in result.files},
        "placeholders": result.placeholders, "absent": result.absent,
        "encoder": encoder_status(out_dir).state,
    })
    return result
