"""`hifi123 report OUT`: one HTML page of everything a run made, openable from disk.

    collect.py   what exists in OUT (run records, trials, videos, logs, evaluation) -> a model
    media.py     the page's assets: links/copies of media, resized images, decoded RGSD targets
    plots.py     threestudio's CSV logs -> one small matplotlib plot per loss term
    page.py      the model -> index.html (every text escaped, every link relative)
    template.py  the page's own CSS and JavaScript (sorting, the 3D viewer and its fallback)
    build.py     ties them together: `build_report(out)`, `report_after_run(out)`
    cli.py       `add_parser(subparsers)` for the `hifi123` command

`build_report(out)` writes `OUT/report/index.html` and `OUT/report/assets/`; the folder holds all
it shows, so it can be moved or mailed. `hifi123 run` calls `report_after_run` at the end of every
run (unless `--no-report`). Imports are lazy: `hifi123 --help` does not load numpy or PIL.
"""

from __future__ import annotations


def build_report(*args, **kwargs) -> str:
    from .build import build_report as build

    return build(*args, **kwargs)


def report_after_run(*args, **kwargs):
    from .build import report_after_run as after

    return after(*args, **kwargs)


__all__ = ["build_report", "report_after_run"]
