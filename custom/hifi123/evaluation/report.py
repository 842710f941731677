"""Reports: JSON (everything) and a markdown table (metrics, the papers' numbers when the protocol
matches, every setting, per-view values, notes).

The papers' numbers (`configs/eval/<protocol>.yaml`; algorithms.md E) are shown beside ours only
when our run follows the protocol (default models, sizes, layers; 16 views at 256 x 256 for GSO).
Neither paper states its CLIP backbone, contextual layer or image size, so even then the single-view
comparison is indicative: our settings are decisions.md 19. `None` marks numbers lost in the papers'
text extraction.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Tuple

from ..errors import InputError
from .defaults import protocol

LOST = "lost"


def columns(name: str) -> List[Tuple[str, str, int]]:
    return [(key, header, int(digits)) for key, header, digits in protocol(name)["columns"]]


def attach_papers(report: Dict[str, Any]) -> Dict[str, Any]:
    """Add the papers' numbers to a report whose protocol matches (in place; returns it)."""
    if report.get("protocol_matches"):
        data = protocol(report["protocol"])
        report["papers"] = [dict(row) for row in data["reported"]]
        report["papers_note"] = data.get("papers_note", "")
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
    cols = columns(proto)
    lines = [f"# hifi123 eval: {protocol(proto)['title']}", ""]
    lines.append("| | " + " | ".join(c[1] for c in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    m = report["metrics"]
    lines.append(
        "| **this run** | "
        + " | ".join(f"**{_fmt(m.get(k), d)}**" if k in m else "–" for k, _, d in cols)
        + " |"
    )
    if report.get("papers"):
        for row in report["papers"]:
            cells = [
                LOST
                if (
                    row.get(k) is None
                    and row["method"] == "HiFi-123"
                    and proto == "gso"
                    and k in ("psnr", "ssim", "lpips")
                )
                else _fmt(row.get(k), d)
                for k, _, d in cols
            ]
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
        raise InputError(
            f"cannot write the report to {out_json}: {err.strerror}",
            "a writable file path",
            "pass another --out",
        ) from err
    return out_json, md
