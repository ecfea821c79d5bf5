"""Download of the official SAM 3D Objects weights and configs from the Hugging Face Hub (step 1).

The Hub repository ``facebook/sam-3d-objects`` keeps its files under ``checkpoints/``; the official
instructions move that folder's content to ``checkpoints/hf``. We write the same flat layout into
``out_dir`` (``out_dir/pipeline.yaml``, ``out_dir/ss_generator.ckpt``, ...).

``pipeline.yaml`` is fetched first: it names each component's config and checkpoint
(``<component>_config_path``, ``<component>_ckpt_path``), so the files fetched are the ones the
pipeline really uses. By default only the sparse-structure stage (generator, decoder, encoder),
which is what sam3d-med fine-tunes; ``everything=True`` fetches every file pipeline.yaml names.

Files are fetched with huggingface_hub's metadata request and HTTP transfer into
``out_dir/.hf_download`` (``_fetch``: an interrupted transfer continues on the next run from the bytes
received, a finished file is checked against the Hub's checksum and recorded, so re-runs skip it),
then hard-linked (copied where links fail) into ``out_dir``. The folder is verified at the end.

The SS encoder is fetched as pipeline.yaml names it: today's release holds ``ss_encoder.ckpt`` and
``ss_encoder.yaml`` (Meta released the encoder on 2026-06-01); older snapshots and mirrors hold 0-byte
placeholders (``ss_encoder.safetensors``, ``ss_encoder.yaml``), which are reported as such, not as a
failed download. The command succeeds when every file the sparse-structure stage needs (generator and
decoder, their YAML, pipeline.yaml) is there, and its summary says whether a usable encoder is: with
one, training takes its flow targets from the encoder; without, from inverting the released decoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
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


def _token_sent(token: str | None) -> bool:
    """Whether a request carries a token: the one given, else HF_TOKEN or a stored login (as
    huggingface_hub resolves it)."""
    from huggingface_hub import get_token

    return bool(token or get_token())


def _explain_hub_error(exc: Exception, repo_id: str, endpoint: str, filename: str, token: str | None = None) -> DownloadError:
    """Turn a huggingface_hub/httpx exception into one line naming what happened (by the HTTP status
    the Hub answered, not by the exception's class) and what to do."""
    from huggingface_hub import errors as hf_errors

    access = (f"request access at {endpoint}/{repo_id} (log in, accept the licence), then authenticate with "
              f"`hf auth login`, the HF_TOKEN environment variable, or --token")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401 or (status is None and isinstance(exc, hf_errors.RepositoryNotFoundError)):
        if not _token_sent(token):
            return DownloadError(f"the Hub refused {repo_id} (HTTP 401): no token was sent (not logged in); it is "
                                 f"gated: {access}")
        return DownloadError(f"the Hub refused the token for {repo_id} (HTTP 401: invalid or expired token): create a "
                             f"new one at {endpoint}/settings/tokens; {access}")
    if status == 403 or isinstance(exc, hf_errors.GatedRepoError):
        return DownloadError(f"{repo_id} is gated and this token has not been granted access (HTTP 403): {access}")
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
           optional: bool = False, log=print) -> Path | None:
    """The file ``checkpoints/filename`` of the repository, downloaded into ``staging`` (None for an
    ``optional`` file the repository does not have).

    A transfer that stops (Ctrl-C, a lost connection, a killed process) keeps the bytes received in
    ``staging/checkpoints/<name>.<etag>.part``, and the next run asks the Hub for the rest only (an
    HTTP Range request); huggingface_hub itself discards a partial file when a process stops. A
    finished file is checked against the Hub's ETag (the SHA-256 of an LFS file, the git blob hash
    of a small one) and recorded beside it (``<name>.json``: ETag, size, commit), so a re-run fetches
    nothing again; offline, a recorded file is used as it is."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    target = staging / REPO_SUBFOLDER / filename
    record_path = target.with_name(f"{filename}.json")
    record = _read_record(record_path) if target.is_file() else None
    url = hf_hub_url(repo_id, f"{REPO_SUBFOLDER}/{filename}", revision=revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, token=token)
    except Exception as exc:  # every failure becomes one line; huggingface_hub raises many types
        if optional and isinstance(exc, hf_errors.RemoteEntryNotFoundError):
            return None
        error = _explain_hub_error(exc, repo_id, endpoint, filename, token)
        if record is not None and str(error).startswith("cannot reach"):  # offline: what was finished before
            log(f"{filename}: the Hub cannot be reached; using the copy finished on {record.get('finished', '?')}")
            return target
        raise error from None
    etag, size = (meta.etag or "").strip('"'), meta.size
    if record is not None and record.get("etag") == etag and target.stat().st_size == size:
        return target  # finished before, unchanged on the Hub
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{filename}.{etag[:16] or 'noetag'}.part")
    for stale in target.parent.glob(f"{filename}.*.part"):  # parts of an older version of the file
        if stale != part:
            stale.unlink(missing_ok=True)
    if target.is_file() and record is None and target.stat().st_size == size and _content_matches(target, etag):
        part = target  # downloaded by an older sam3d-med, without a record: verified, kept
    else:
        received = part.stat().st_size if part.is_file() else 0
        if size is not None and received > size:  # not a prefix of this file
            part.unlink()
            received = 0
        if received:
            log(f"{filename}: continuing from {received:,d} of {size or 0:,d} bytes received before")
        from filelock import FileLock, Timeout

        try:
            with FileLock(f"{part}.lock", timeout=0), open(part, "ab") as fh:
                http_get(meta.location, fh, resume_size=received, headers=build_hf_headers(token=token),
                         expected_size=size, displayed_filename=filename)
                fh.flush()
                os.fsync(fh.fileno())
        except Timeout:
            raise DownloadError(f"{filename}: another download into {staging.parent} is running; wait for it, or "
                                f"stop it first") from None
        except Exception as exc:  # the bytes received stay in the .part file, for the next run
            raise _explain_hub_error(exc, repo_id, endpoint, filename, token) from None
        if not _content_matches(part, etag):
            part.unlink()
            raise DownloadError(f"{filename}: the downloaded bytes do not match the Hub's checksum ({etag[:16]}...): "
                                f"the partial file was removed; run the same command again")
        os.replace(part, target)
    atomic_write_json(record_path, {"etag": etag, "size": size, "commit": meta.commit_hash,
                                    "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    return target


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _content_matches(path: Path, etag: str) -> bool:
    """Whether the file's content is what the Hub's ETag names: a SHA-256 (64 hex digits: LFS files)
    or a git blob SHA-1 (40: files kept in git); any other ETag cannot be checked (True)."""
    if len(etag) == 64:
        digest = hashlib.sha256()
    elif len(etag) == 40:
        digest = hashlib.sha1()
        digest.update(f"blob {path.stat().st_size}\0".encode())
    else:
        return True
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == etag


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
    pipeline_path = _fetch(repo_id, PIPELINE_FILE, staging, revision, token, endpoint, log=log)
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
            _fetch(repo_id, name, staging, revision, token, endpoint, optional=name not in required, log=log)
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
