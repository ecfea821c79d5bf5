"""``sam3d-med check-release``: how well the released SS encoder and decoder represent your structures,
as solids and as surface shells, before you fine-tune.

What the SS occupancy of SAM 3D Objects holds is a fact of the real files: the official
``voxelize_mesh`` marks the voxels a mesh's surface passes through, and the inference pipeline can prune
a decoded occupancy to its surface, while our targets have been solids. For every (case, class) of a
preprocessed cache (in the object frame: the structure in its own cube, as training sees it) this
encodes (posterior mean) and decodes

  (a) the solid occupancy: round-trip Dice of decoder(encoder(solid)) > 0 against the solid;
  (b) its one-voxel surface shell (``data.occupancy``): round-trip Dice against the shell, and of the
      decoded shell filled back into a solid (``data.occupancy.fill_shell``, as inference does)
      against the solid, which is what the metrics will see,

and times the encoder per volume. It recommends ``data.occupancy=solid`` or ``surface`` by which gives
the better solid after the round trip ((a) vs (b) filled). The encoder (59 M parameters) and decoder
(74 M) are small: this runs on a CPU.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.cache import class_names_of
from ..data.dataset import load_manifest
from ..data.object_frame import DEFAULT_CUBE_MARGIN
from ..data.occupancy import fill_shell, surface_shell
from ..model.checkpoint import load_vae_from_folder
from .latent_targets import case_occupancies, encode_occupancy
from .losses import dice


@dataclass
class ReleaseCheck:
    """Per class name: lists of round-trip Dice, and the timings (seconds per volume)."""

    solid: dict[str, list[float]] = field(default_factory=dict)
    shell: dict[str, list[float]] = field(default_factory=dict)
    shell_filled: dict[str, list[float]] = field(default_factory=dict)
    encoder_seconds: list[float] = field(default_factory=list)
    decoder_seconds: list[float] = field(default_factory=list)
    cases: int = 0

    def means(self, table: dict[str, list[float]]) -> float:
        values = [v for vs in table.values() for v in vs]
        return float(np.mean(values)) if values else float("nan")

    @property
    def recommendation(self) -> str:
        return "surface" if self.means(self.shell_filled) > self.means(self.solid) else "solid"

    def table(self) -> str:
        rows = ["| class | n | solid round trip | surface round trip | surface filled vs solid |", "|---|---|---|---|---|"]
        for name in self.solid:
            rows.append(f"| {name} | {len(self.solid[name])} | {np.mean(self.solid[name]):.3f} | "
                        f"{np.mean(self.shell[name]):.3f} | {np.mean(self.shell_filled[name]):.3f} |")
        rows.append(f"| all | {sum(map(len, self.solid.values()))} | {self.means(self.solid):.3f} | "
                    f"{self.means(self.shell):.3f} | {self.means(self.shell_filled):.3f} |")
        return "\n".join(rows)


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - started


def check_release(config_dir: str | Path, data_root: str | Path, cases: int | None = None, device: str = "cpu",
                  frame: str = "object", cube_margin: float = DEFAULT_CUBE_MARGIN, log=print) -> ReleaseCheck:
    """Round trips of the first ``cases`` cases of the cache ``data_root`` through the encoder and decoder
    of ``config_dir`` (see the module docstring); one volume at a time, so the times are per volume."""
    manifest = load_manifest(data_root)
    device = torch.device(device)
    encoder, decoder, config = load_vae_from_folder(config_dir, log=log)
    encoder, decoder = encoder.to(device), decoder.to(device)
    names = class_names_of(manifest)
    result = ReleaseCheck()
    chosen = manifest["cases"][:cases] if cases else manifest["cases"]
    from tqdm import tqdm

    for case in tqdm(chosen, desc="round trips", unit="case"):
        solids = torch.from_numpy(case_occupancies(Path(data_root), case, frame, config.occupancy_resolution,
                                                   cube_margin))
        for k in range(solids.shape[0]):
            if not solids[k].any():
                continue
            name = names.get(k + 1, f"class {k + 1}")
            solid = solids[k][None, None].float().to(device)
            shell = surface_shell(solid > 0.5).float()
            with torch.no_grad():
                latent, seconds = _timed(lambda: encode_occupancy(encoder, solid), device)
                logits, decode_seconds = _timed(lambda: decoder(latent).float(), device)
                shell_logits = decoder(encode_occupancy(encoder, shell)).float()
            result.encoder_seconds.append(seconds)
            result.decoder_seconds.append(decode_seconds)
            truth, shell_truth = solid > 0.5, shell > 0.5
            result.solid.setdefault(name, []).append(float(dice(logits > 0, truth)[0]))
            result.shell.setdefault(name, []).append(float(dice(shell_logits > 0, shell_truth)[0]))
            filled = fill_shell(shell_logits > 0)
            result.shell_filled.setdefault(name, []).append(float(dice(filled, truth)[0]))
        result.cases += 1
    return result


def report(result: ReleaseCheck, device: str) -> str:
    """The table, the timings and the recommendation, as the command prints them."""
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = f", GPU peak {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB"
    lines = [f"Round-trip Dice through the released SS encoder (posterior mean) and decoder, {result.cases} cases, "
             f"object frame:", result.table(),
             f"encoder {1000 * np.median(result.encoder_seconds):.1f} ms per volume, decoder "
             f"{1000 * np.median(result.decoder_seconds):.1f} ms (median over {len(result.encoder_seconds)} volumes, "
             f"{device}); peak memory {peak_mib:,.0f} MiB{gpu}",
             f"recommended: data.occupancy={result.recommendation} (the better solid after the round trip: solid "
             f"{result.means(result.solid):.3f}, surface filled {result.means(result.shell_filled):.3f})"]
    return "\n".join(lines)
