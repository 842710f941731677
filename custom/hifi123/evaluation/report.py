"""Reports: JSON (everything) and a markdown table (metrics, the papers' numbers when the protocol
matches, every setting, per-view values, notes).

The papers' numbers (algorithms.md E) are shown beside ours only when our run follows the protocol
(default models, sizes, layers; 16 views at 256 x 256 for GSO). Neither paper states its CLIP
backbone, contextual layer or image size, so even then the single-view comparison is indicative:
our settings are decisions.md 19. `None` marks numbers lost in the papers' text extraction.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Tuple

from ..errors import InputError

# (source, method, {metric: value}); CLIP as a fraction (Make-It-3D prints percent)
SINGLE_VIEW_PAPERS: List[Tuple[str, str, Dict[str, Any]]] = [
    ("HiFi-123 Tab. 2, 400 images", "RealFusion", {"lpips_ref": 0.195, "contextual": 2.180, "clip": 0.767}),
    ("HiFi-123 Tab. 2, 400 images", "Make-It-3D", {"lpips_ref": 0.097, "contextual": 1.978, "clip": 0.898}),
    ("HiFi-123 Tab. 2, 400 images", "Magic123", {"lpips_ref": 0.085, "contextual": 1.882, "clip": 0.883}),
    ("HiFi-123 Tab. 2, 400 images", "HiFi-123", {"lpips_ref": 0.081, "contextual": 1.627, "clip": 0.916}),
    ("HiFi-123 Tab. 3 (ablation)", "coarse", {"lpips_ref": None, "contextual": 1.901, "clip": 0.836}),
    ("HiFi-123 Tab. 3 (ablation)", "refine with SDS", {"lpips_ref": None, "contextual": 1.925, "clip": 0.855}),
    ("HiFi-123 Tab. 3 (ablation)", "refine with RGSD", {"lpips_ref": None, "contextual": 1.627, "clip": 0.916}),
    ("Make-It-3D Tab. 2, 400 images", "DreamFusion+", {"lpips_ref": 0.5649, "contextual": 3.07, "clip": 0.8408}),
    ("Make-It-3D Tab. 2, 400 images", "Point-E", {"lpips_ref": None, "contextual": 5.37, "clip": 0.6436}),
    ("Make-It-3D Tab. 2, 400 images", "Make-It-3D coarse", {"lpips_ref": 0.2354, "contextual": 1.98, "clip": 0.8906}),
    ("Make-It-3D Tab. 2, 400 images", "Make-It-3D enhanced", {"lpips_ref": 0.0780, "contextual": 1.33, "clip": 0.9512}),
    ("Make-It-3D Tab. 1, DTU", "DietNeRF (3 views)", {"lpips_ref": 0.1831, "contextual": 5.34, "clip": 0.6490}),
    ("Make-It-3D Tab. 1, DTU", "SinNeRF", {"lpips_ref": 0.2059, "contextual": 4.28, "clip": 0.7324}),
    ("Make-It-3D Tab. 1, DTU", "DreamFusion+", {"lpips_ref": 0.4075, "contextual": 2.15, "clip": 0.8281}),
    ("Make-It-3D Tab. 1, DTU", "Point-E", {"lpips_ref": None, "contextual": 2.23, "clip": 0.7131}),
    ("Make-It-3D Tab. 1, DTU", "3D-Photo", {"lpips_ref": None, "contextual": 3.43, "clip": 0.8765}),
    ("Make-It-3D Tab. 1, DTU", "Make-It-3D coarse", {"lpips_ref": 0.1427, "contextual": 1.74, "clip": 0.8750}),
    ("Make-It-3D Tab. 1, DTU", "Make-It-3D enhanced", {"lpips_ref": 0.0908, "contextual": 1.59, "clip": 0.9565}),
]

GSO_PAPERS: List[Tuple[str, str, Dict[str, Any]]] = [
    ("HiFi-123 Tab. 2, GSO", "RealFusion", {"psnr": 15.37, "ssim": 0.715, "lpips": 0.288, "chamfer": 0.082, "volume_iou": 0.274}),
    ("HiFi-123 Tab. 2, GSO", "Make-It-3D", {"psnr": 17.08, "ssim": 0.783, "lpips": 0.225, "chamfer": 0.064, "volume_iou": 0.401}),
    ("HiFi-123 Tab. 2, GSO", "Magic123", {"psnr": 19.33, "ssim": 0.801, "lpips": 0.156, "chamfer": 0.052, "volume_iou": 0.453}),
    ("HiFi-123 Tab. 2, GSO", "HiFi-123", {"psnr": None, "ssim": None, "lpips": None, "chamfer": 0.025, "volume_iou": 0.577}),
    ("HiFi-123 Tab. 3 (ablation), GSO", "coarse", {"psnr": 17.82, "ssim": 0.794, "lpips": 0.215, "chamfer": None, "volume_iou": None}),
    ("HiFi-123 Tab. 3 (ablation), GSO", "refine with SDS", {"psnr": 19.25, "ssim": 0.810, "lpips": 0.188, "chamfer": None, "volume_iou": None}),
]

COLUMNS = {
    "single-view": [("lpips_ref", "LPIPS_ref (alex) ↓", 4), ("contextual", "Contextual ↓", 3), ("clip", "CLIP ↑", 4)],
    "gso": [("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 3), ("lpips", "LPIPS (vgg) ↓", 3),
            ("chamfer", "CD ↓", 4), ("volume_iou", "Vol. IoU ↑", 3)],
}
PAPERS = {"single-view": SINGLE_VIEW_PAPERS, "gso": GSO_PAPERS}
TITLES = {"single-view": "single-view protocol (Make-It-3D / HiFi-123)",
          "gso": "GSO protocol (SyncDreamer, HiFi-123 Tab. 2)"}
LOST = "lost"


def attach_papers(report: Dict[str, Any]) -> Dict[str, Any]:
    """Add the papers' numbers to a report whose protocol matches (in place; returns it)."""
    if report.get("protocol_matches"):
        report["papers"] = [{"source": s, "method": m, **v} for s, m, v in PAPERS[report["protocol"]]]
        report["papers_note"] = ("the papers do not state their CLIP backbone, contextual layer or image sizes; "
                                 "ours follow decisions.md 19, so the comparison is indicative; null = lost in the "
                                 "papers' text extraction") if report["protocol"] == "single-view" else \
            "null = lost in the paper's text extraction"
    else:
        report.pop("papers", None)
    return report


def _fmt(v, digits: int) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}"
    return str(v)


def _flatten(d: Any, prefix: str = "") -> List[Tuple[str, str]]:
    rows: List[Tuple[str, str]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        if isinstance(d, float):
            d = f"{d:.6g}"
        elif isinstance(d, (list, tuple)):
            d = ", ".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in d)
        rows.append((prefix, str(d).replace("|", "\\|").replace("\n", " ")))
    return rows


def to_markdown(report: Dict[str, Any]) -> str:
    proto = report["protocol"]
    cols = COLUMNS[proto]
    lines = [f"# hifi123 eval: {TITLES[proto]}", ""]
    lines.append("| | " + " | ".join(c[1] for c in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    m = report["metrics"]
    lines.append("| **this run** | " + " | ".join(f"**{_fmt(m.get(k), d)}**" if k in m else "–" for k, _, d in cols) + " |")
    if report.get("papers"):
        for row in report["papers"]:
            cells = [LOST if (row.get(k) is None and row["method"] == "HiFi-123" and proto == "gso" and k in ("psnr", "ssim", "lpips"))
                     else _fmt(row.get(k), d) for k, _, d in cols]
            lines.append(f"| {row['source']}: {row['method']} | " + " | ".join(cells) + " |")
        lines += ["", f"Papers' numbers: {report.get('papers_note', '')}."]
    else:
        lines += ["", "Papers' numbers not shown: this run does not follow the protocol:"]
        lines += [f"- {d}" for d in report.get("protocol_differences", [])]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _flatten(report["settings"])]
    pv = report.get("per_view") or []
    if pv:
        keys = [k for k in pv[0].keys()]
        lines += ["", "## Per view", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in pv:
            lines.append("| " + " | ".join(_fmt(row[k], 4) for k in keys) + " |")
    lines += ["", f"Computed in {report.get('seconds', 0):.1f} s.", ""]
    return "\n".join(lines)


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def json_safe(obj):
    """A copy with non-finite floats as strings ("inf": PSNR of identical images) so the file is
    strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def write_report(report: Dict[str, Any], out_json: str) -> Tuple[str, str]:
    """Write `out_json` and the markdown next to it (same name, .md). Returns both paths."""
    out_json = os.path.abspath(os.path.expanduser(out_json))
    folder = os.path.dirname(out_json)
    try:
        os.makedirs(folder, exist_ok=True)
        with open(out_json, "w", encoding="utf-8") as f:
            json.dump(json_safe(report), f, indent=2, default=_json_default, allow_nan=False)
            f.write("\n")
        md = os.path.splitext(out_json)[0] + ".md"
        with open(md, "w", encoding="utf-8") as f:
            f.write(to_markdown(report))
    except OSError as err:
        raise InputError(f"cannot write the report to {out_json}: {err.strerror}", "a writable file path",
                         "pass another --out") from err
    return out_json, md
