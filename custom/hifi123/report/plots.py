"""Loss curves from threestudio's CSV logs, one small matplotlib plot per loss term.

threestudio's launch.py logs with Lightning's CSVLogger to
`<trial>/csv_logs/version_<k>/metrics.csv`
(a resumed run starts a new version): a `step` column and one column per logged value, empty
where a row does not carry it. Every column whose name holds `loss` is a term here; the versions
are merged in step order (a resumed run's rows replace the earlier ones at the same step).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Dict, List, Sequence, Tuple

Series = Dict[str, List[Tuple[float, float]]]


def read_losses(paths: Sequence[str]) -> Series:
    """{column: [(step, value), ...]} of the loss columns, sorted by step."""
    merged: Dict[str, Dict[float, float]] = {}
    for path in paths:
        try:
            with open(path, newline="", encoding="utf-8", errors="replace") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            continue
        for row in rows:
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                continue
            if math.isnan(step):
                continue
            for key, text in row.items():
                if not key or "loss" not in key.lower() or text in (None, ""):
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    merged.setdefault(key, {})[step] = value
    return {k: sorted(v.items()) for k, v in sorted(merged.items())}


def plot_name(column: str) -> str:
    """A file name for a column (`train/loss_rgb` -> `train-loss_rgb.png`)."""
    safe = "".join(c if c.isalnum() or c in "_-." else "-" for c in column).strip("-.")
    return (safe or "loss") + ".png"


def plot_losses(series: Series, folder: str, title_prefix: str = "") -> List[Tuple[str, str]]:
    """Write one PNG per term into `folder`; returns [(column, path)]. Raises ImportError without
    matplotlib (the caller says so on the page)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    written = []
    for column, points in series.items():
        steps = [p[0] for p in points]
        values = [p[1] for p in points]
        fig, ax = plt.subplots(figsize=(3.2, 2.2), dpi=80)
        ax.plot(steps, values, lw=1.0, color="#1f5fa8", marker="." if len(points) < 30 else None)
        if values and min(values) > 0 and max(values) / max(min(values), 1e-30) > 1e3:
            ax.set_yscale("log")
        ax.set_title(f"{title_prefix}{column}", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(folder, plot_name(column))
        fig.savefig(path)
        plt.close(fig)
        written.append((column, path))
    return written
