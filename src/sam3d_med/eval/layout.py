"""Where an evaluation folder keeps what: the one list both the evaluation (writer) and the report and
figures (readers) use.

``metrics.json`` / ``metrics.csv`` (the summary, every record), ``cases/<id>.json`` (one case's records
with the protocol that scored them: a re-run with the same protocol skips the case) and, with figures,
``visualizations/<id>.png`` (the comparison grid) and ``visualizations/<id>_volumes.npz`` (per-class
logits, true labels, affine: the report's surfaces).
"""

from __future__ import annotations

from pathlib import Path

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
CASES_DIR = "cases"
VIZ_DIR = "visualizations"


def case_record_path(output_dir: Path, case_id: str) -> Path:
    """A scored case's records in ``CASES_DIR``."""
    return Path(output_dir) / CASES_DIR / f"{case_id}.json"


def case_figure_path(viz_dir: Path, case_id: str) -> Path:
    """A case's comparison grid in ``VIZ_DIR`` (written with figures on, embedded by the report)."""
    return Path(viz_dir) / f"{case_id}.png"


def case_volumes_path(viz_dir: Path, case_id: str) -> Path:
    """A case's compact volumes in ``VIZ_DIR``, from which the report draws its surfaces."""
    return Path(viz_dir) / f"{case_id}_volumes.npz"
