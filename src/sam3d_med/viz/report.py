"""One self-contained HTML report of an evaluation folder (``sam3d-med report results/evaluation``).

It reads what the evaluation wrote (``metrics.json``; with ``--save_viz`` also
``visualizations/<case>.png`` and ``visualizations/<case>_volumes.npz``, from which it extracts the
predicted and true surfaces) and
writes one HTML file that works offline: plotly.js is embedded (no CDN), the figures are embedded
as base64 PNG, the surfaces as plotly meshes. Sections: protocol, metrics table of the model,
baseline comparison (table and bar chart), per-class box plots, per-case figures (worst model Dice
first), and an interactive 3-D view of predicted vs true surfaces for a few cases chosen across the
range of model Dice (worst, median, best, ...).
"""

from __future__ import annotations

import base64
import html
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..eval.layout import METRICS_JSON, VIZ_DIR, case_figure_path, case_volumes_path
from ..eval.metrics import metric_table
from ..io.atomic import atomic_write_text
from .comparison import case_surfaces, load_case_volumes
from .palette import class_colour_hex

METHOD_LABELS = {"model": "fine-tuned model", "mean_shape": "baseline: mean shape", "extrude": "baseline: extrude",
                 "visual_hull": "baseline: visual hull", "interpolation": "baseline: shape-based interpolation",
                 "unet": "baseline: 3-D U-Net"}
METHOD_COLOURS = {"model": "#1f77b4", "mean_shape": "#7f7f7f", "extrude": "#bcbd22", "visual_hull": "#bcbd22",
                  "interpolation": "#17becf", "unet": "#d62728"}


def _number(value) -> float:
    """A metrics.json value (float, or "nan"/"inf" strings for non-finite values) as a float."""
    return float(value) if value is not None else math.nan


def _cell(value, digits: int = 3) -> str:
    value = _number(value)
    return "&ndash;" if math.isnan(value) else ("&infin;" if math.isinf(value) else f"{value:.{digits}f}")


def _table(header: list[str] | None, rows: list[list[str]]) -> str:
    """An HTML table; each row's first cell is its label (a row header)."""
    head = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + f"<th>{row[0]}</th>" + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _summary_cell(stats: dict, statistic: str, digits: int) -> str:
    """A summary statistic as the console table shows it: failures (inf) are in the value, and their
    count beside it (``runner.distance_cell``)."""
    cell = _cell(stats[statistic], digits)
    if stats.get("inf"):
        cell += f" <small>({stats['inf']} of {stats['count'] - stats['nan']} inf)</small>"
    return cell


def _model_table(summary: dict, nsd_keys: list[str]) -> str:
    header = ["class", "n", "Dice mean &plusmn; std", "Dice median", "HD95 median (mm)", "Chamfer median (mm)"]
    header += [f"NSD@{k[4:-2]} mm mean" for k in nsd_keys] + ["non-finite (NaN / inf)"]
    rows = []
    per_class = summary["model"]["per_class"]
    for name, stats in list(per_class.items()) + [("all classes", summary["model"]["overall"])]:
        dice = stats["dice"]
        nonfinite = f"{stats['hd95_mm']['nan']} / {stats['hd95_mm']['inf']} (HD95)"
        rows.append([html.escape(name), str(dice["count"]), f"{_cell(dice['mean'])} &plusmn; {_cell(dice['std'])}",
                     _cell(dice["median"]), _summary_cell(stats["hd95_mm"], "median", 1),
                     _summary_cell(stats["chamfer_mm"], "median", 1)]
                    + [_cell(stats[k]["mean"]) for k in nsd_keys] + [nonfinite])
    return _table(header, rows)


def _comparison_table(summary: dict, methods: list[str], nsd_tolerances_mm) -> str:
    """Each method's summary of every metric the table puts in the report (``metrics.Metric.report``),
    per class; the best of a row's methods in bold."""
    compared = [m for m in metric_table(nsd_tolerances_mm) if m.report]
    header = ["class"] + [f"{metric.column}{' ' + metric.unit if metric.unit else ''} ({metric.statistic})<br><small>"
                          f"{METHOD_LABELS.get(m, m)}</small>" for metric in compared for m in methods]
    rows = []
    classes = list(summary[methods[0]]["per_class"])
    for name in classes + ["all classes"]:
        row = [html.escape(name)]
        for metric in compared:
            key, statistic, higher_better = metric.key, metric.statistic, metric.higher_is_better
            stats = [(summary[m]["overall"] if name == "all classes" else summary[m]["per_class"][name])[key]
                     for m in methods]
            values = [_number(st[statistic]) for st in stats]
            # failures (inf) are in the values, so a method that failed is never the best; NaN (undefined) is not
            defined = [v for v in values if not math.isnan(v)]
            best = (max(defined) if higher_better else min(defined)) if defined else None
            best = best if best is not None and math.isfinite(best) else None
            digits = 1 if metric.unit == "mm" else 3  # millimetres vs fractions
            row += [f"<b>{_summary_cell(st, statistic, digits)}</b>" if v == best else _summary_cell(st, statistic, digits)
                    for st, v in zip(stats, values)]
        rows.append(row)
    return _table(header, rows)


def _plotly_div(fig) -> str:
    return fig.to_html(include_plotlyjs=False, full_html=False, config={"displaylogo": False, "responsive": True})


def _bar_chart(summary: dict, methods: list[str]) -> str:
    import plotly.graph_objects as go

    classes = list(summary[methods[0]]["per_class"])
    fig = go.Figure()
    for m in methods:
        stats = [summary[m]["per_class"][c]["dice"] for c in classes]
        fig.add_trace(go.Bar(name=METHOD_LABELS.get(m, m), x=classes, y=[_number(s["mean"]) for s in stats],
                             error_y={"type": "data", "array": [_number(s["std"]) for s in stats]},
                             marker_color=METHOD_COLOURS.get(m)))
    fig.update_layout(barmode="group", yaxis_title="Dice (mean &plusmn; std)", yaxis_range=[0, 1], height=380,
                      margin={"t": 30, "b": 40}, legend={"orientation": "h"})
    return _plotly_div(fig)


def _box_plots(records: list[dict], methods: list[str]) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Dice", "HD95 (mm; failures, inf, drawn as crosses at the top)"))
    finite_hd95 = [_number(r["hd95_mm"]) for r in records if math.isfinite(_number(r["hd95_mm"]))]
    top = 1.1 * max(finite_hd95, default=10.0)  # where a failure is drawn: above every finite value
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        failures = sum(math.isinf(_number(r["hd95_mm"])) for r in rows)
        label = METHOD_LABELS.get(m, m) + (f" ({failures} failed: HD95 inf)" if failures else "")
        for col, key in ((1, "dice"), (2, "hd95_mm")):
            values = [(r["class_name"], _number(r[key])) for r in rows]
            finite = [(c, v) for c, v in values if math.isfinite(v)]
            fig.add_trace(go.Box(x=[c for c, _ in finite], y=[v for _, v in finite], name=label,
                                 marker_color=METHOD_COLOURS.get(m), boxpoints="all", jitter=0.4, pointpos=0,
                                 legendgroup=m, showlegend=(col == 1)), row=1, col=col)
            inf = [c for c, v in values if math.isinf(v)]
            if inf:
                fig.add_trace(go.Scatter(x=inf, y=[top] * len(inf), mode="markers", name=f"{label}: inf",
                                         marker={"symbol": "x", "size": 10, "color": METHOD_COLOURS.get(m)},
                                         legendgroup=m, showlegend=False), row=1, col=col)
    fig.update_layout(boxmode="group", height=430, margin={"t": 40, "b": 40}, legend={"orientation": "h"})
    return _plotly_div(fig)


def _case_dice(records: list[dict]) -> dict[str, float]:
    """Mean model Dice per case (over classes and axes; finite values)."""
    per_case: dict[str, list[float]] = {}
    for r in records:
        if r["method"] == "model" and math.isfinite(_number(r["dice"])):
            per_case.setdefault(r["case_id"], []).append(_number(r["dice"]))
    return {c: float(np.mean(v)) for c, v in per_case.items()}


def _spread(ordered: list[str], count: int) -> list[str]:
    """``count`` entries spread over a sorted list: first (worst), last (best) and evenly between."""
    if len(ordered) <= count:
        return ordered
    picks = sorted({round(i * (len(ordered) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
    return [ordered[i] for i in picks]


def simplified_for_display(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertex clustering (display only): vertices are merged per cubic cell, the cell doubling from
    1 mm until at most ``max_faces`` faces remain; collapsed and repeated faces are dropped. A noisy
    prediction's surface (10^5-10^6 faces) would otherwise make the report hundreds of MB."""
    vertices, faces = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    cell = 1.0
    while len(faces) > max_faces:
        keys = np.floor(vertices / cell).astype(np.int64)
        _, cluster = np.unique(keys, axis=0, return_inverse=True)
        cluster = cluster.ravel()
        counts = np.bincount(cluster)
        merged = np.stack([np.bincount(cluster, weights=vertices[:, a]) / counts for a in range(3)], axis=1)
        new_faces = cluster[faces]
        keep = ((new_faces[:, 0] != new_faces[:, 1]) & (new_faces[:, 1] != new_faces[:, 2])
                & (new_faces[:, 0] != new_faces[:, 2]))
        new_faces = new_faces[keep]
        _, first = np.unique(np.sort(new_faces, axis=1), axis=0, return_index=True)
        vertices, faces = merged, new_faces[np.sort(first)]
        cell *= 2.0
    used, faces = np.unique(faces, return_inverse=True)
    return vertices[used], faces.reshape(-1, 3)


def _surfaces_view(viz_dir: Path, cases: list[str], class_names: dict[int, str], max_faces: int) -> str:
    """One plotly scene; a menu picks the case. True surfaces translucent, predicted ones solid."""
    import plotly.graph_objects as go

    fig = go.Figure()
    owners, simplified = [], 0
    for case in cases:
        logits, true_labels, affine = load_case_volumes(case_volumes_path(viz_dir, case))
        surfaces = case_surfaces(logits, affine, true_labels)
        for c in sorted(surfaces):
            name = class_names.get(c, f"class {c}")
            for kind, opacity in (("true", 0.3), ("pred", 1.0)):
                mesh = surfaces[c].get(kind)
                if mesh is None:
                    continue
                vertices, faces = simplified_for_display(mesh.vertices, mesh.faces, max_faces)
                vertices = vertices.astype(np.float32)
                # plotly embeds arrays as typed binary: 16-bit indices when they fit halve the faces' bytes
                faces = faces.astype(np.uint16 if len(vertices) < 2**16 else np.int32)
                simplified += len(faces) < len(mesh.faces)
                fig.add_trace(go.Mesh3d(x=vertices[:, 0], y=vertices[:, 1], z=vertices[:, 2], i=faces[:, 0],
                                        j=faces[:, 1], k=faces[:, 2], color=class_colour_hex(c), opacity=opacity,
                                        flatshading=False, name=f"{name} ({'truth' if kind == 'true' else 'prediction'})",
                                        legendgroup=f"{c}{kind}", showlegend=True, visible=(case == cases[0]),
                                        lighting={"ambient": 0.5, "diffuse": 0.8, "specular": 0.1}))
                owners.append(case)
    buttons = [{"label": case, "method": "update",
                "args": [{"visible": [o == case for o in owners]}, {"title.text": f"{case}: predicted (solid) vs true (translucent) surfaces"}]}
               for case in cases]
    fig.update_layout(height=620, margin={"t": 50, "b": 0, "l": 0, "r": 0},
                      title={"text": f"{cases[0]}: predicted (solid) vs true (translucent) surfaces", "x": 0.12},
                      scene={"aspectmode": "data", "xaxis_title": "x (mm, R+)", "yaxis_title": "y (mm, A+)",
                             "zaxis_title": "z (mm, S+)"},
                      updatemenus=[{"buttons": buttons, "direction": "down", "x": 0.0, "xanchor": "left", "y": 1.08}])
    note = (f"<p>{simplified} surfaces over {max_faces:,} faces are simplified for display (vertex clustering).</p>"
            if simplified else "")
    return note + _plotly_div(fig)


def _figures(viz_dir: Path, cases: list[str], case_dice: dict[str, float]) -> str:
    parts = []
    for case in cases:
        data = base64.b64encode(case_figure_path(viz_dir, case).read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{html.escape(case)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(case)}: mean model Dice {case_dice.get(case, math.nan):.3f}</figcaption></figure>")
    return "\n".join(parts)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;color:#222;padding:0 16px}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child{text-align:left}thead th{background:#f2f2f2;text-align:center}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:0.9em;color:#555}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px}code{background:#f4f4f4;padding:1px 4px}
"""


def build_report(eval_dir: str | Path, max_figures: int = 20, max_3d_cases: int = 3,
                 max_faces_per_surface: int = 20_000) -> str:
    """The report's HTML text (see the module doc)."""
    import plotly
    import plotly.offline

    eval_dir = Path(eval_dir)
    metrics_path = eval_dir / METRICS_JSON
    if not metrics_path.is_file():
        raise InputError(f"{eval_dir}: no metrics.json: not an evaluation folder (run scripts/eval_medical.py first)")
    try:
        document = json.loads(metrics_path.read_text())
        summary, records, protocol = document["summary"], document["records"], document["protocol"]
    except (ValueError, KeyError) as exc:
        raise InputError(f"{metrics_path}: not a sam3d-med metrics file ({type(exc).__name__}: {exc})") from None
    methods = [m for m in METHOD_LABELS if m in summary]
    if "model" not in summary or not records:
        raise InputError(f"{metrics_path}: holds no model results")
    class_names = {int(r["class_id"]): r["class_name"] for r in records}
    nsd_keys = [f"nsd_{t:g}mm" for t in protocol["nsd_tolerances_mm"]]
    case_dice = _case_dice(records)
    ordered = sorted(case_dice, key=lambda c: (case_dice[c], c))  # worst first

    viz_dir = eval_dir / VIZ_DIR
    with_figure = [c for c in ordered if case_figure_path(viz_dir, c).is_file()]
    with_meshes = [c for c in ordered if case_volumes_path(viz_dir, c).is_file()]
    missing = ('<p class="note">This evaluation was run without <code>--save_viz</code>: run '
               '<code>scripts/eval_medical.py ... --save_viz</code> on the same output folder (scored cases are kept) '
               "to add the per-case figures and surfaces.</p>")
    figures_html = (_figures(viz_dir, with_figure[:max_figures], case_dice)
                    + (f"<p>{len(with_figure) - max_figures} more figures in <code>{html.escape(str(viz_dir))}</code>.</p>"
                       if len(with_figure) > max_figures else "")) if with_figure else missing
    view_cases = _spread(with_meshes, max_3d_cases)
    surfaces_html = (f"<p>Cases across the range of model Dice (worst to best): {', '.join(view_cases)}. Drag to rotate, "
                     "scroll to zoom, click a legend entry to hide a surface; world coordinates in mm (RAS+).</p>"
                     + _surfaces_view(viz_dir, view_cases, class_names, max_faces_per_surface)) if view_cases else missing

    sampler = protocol.get("sampler", {})
    protocol_rows = [["checkpoint", html.escape(str(protocol.get("checkpoint")))],
                     ["conditioning slice policy", html.escape(str(protocol.get("policy")))],
                     ["threshold", html.escape(str(protocol.get("threshold")))],
                     ["sampler", html.escape(", ".join(f"{k} {v}" for k, v in sampler.items()))],
                     ["seed", str(protocol.get("seed"))],
                     ["surface Dice tolerances", ", ".join(f"{t:g} mm" for t in protocol["nsd_tolerances_mm"])],
                     ["empty masks", html.escape(str(document.get("empty_mask_convention", "")))],
                     ["cases / records", f"{len(case_dice)} / {len(records)}"],
                     ["versions", html.escape(", ".join(f"{k} {v}" for k, v in document.get("versions", {}).items()))]]
    title = f"sam3d-med evaluation report: {html.escape(eval_dir.name)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head>
<body>
<h1>{title}</h1>
<p>From <code>{html.escape(str(eval_dir.resolve()))}</code>, written {datetime.now().strftime("%Y-%m-%d %H:%M")}
(plotly {plotly.__version__} embedded: this file works offline).</p>
<h2>Protocol</h2>
{_table(None, protocol_rows)}
<h2>Metrics of the fine-tuned model</h2>
<p>Per class over every (case, conditioning axis) pair; distances in mm on the evaluation grid.</p>
{_model_table(summary, nsd_keys)}
<h2>Baseline comparison</h2>
<p>Same samples, same protocol; the best value of each metric is in bold.</p>
{_comparison_table(summary, methods, protocol["nsd_tolerances_mm"])}
{_bar_chart(summary, methods)}
<h2>Per-class distributions</h2>
{_box_plots(records, methods)}
<h2>Per-case figures (worst model Dice first)</h2>
{figures_html}
<h2>Predicted vs true surfaces (interactive)</h2>
{surfaces_html}
</body></html>
"""


def write_report(eval_dir: str | Path, out_path: str | Path | None = None, max_figures: int = 20,
                 max_3d_cases: int = 3, max_faces_per_surface: int = 20_000) -> Path:
    """Write the report (default ``<eval_dir>/report.html``) atomically; returns its path."""
    out_path = Path(out_path) if out_path else Path(eval_dir) / "report.html"
    atomic_write_text(out_path, build_report(eval_dir, max_figures, max_3d_cases, max_faces_per_surface))
    return out_path
