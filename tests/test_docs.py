"""Every choice the code, the YAML files, the README and `--help` cite lives in `docs/`.

A citation is "decision N" / "decisions N, M" / "decisions N-M" (a numbered heading of
docs/decisions.md), "algorithms.md X" or "algorithms.md X.Y" (a lettered heading of
docs/algorithms.md), "threestudio.md §N" (a numbered heading of docs/threestudio.md), or a path
"docs/<file>.md" (the file)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SOURCES = [
    p
    for d in ("custom", "configs", "docs")
    for p in (ROOT / d).rglob("*")
    if p.suffix in (".py", ".yaml", ".md", ".txt") and p.is_file()
]
SOURCES += [ROOT / "README.md", ROOT / "install.sh", ROOT / ".ci" / "run"]

DECISION = re.compile(r"\b[Dd]ecisions?(?:\.md)?,? §?(\d+(?:\s*(?:,|-|–|and)\s*\d+)*)")
ALGORITHMS = re.compile(r"algorithms\.md,? §?([A-G](?:\.\d+)?(?:\s*-\s*[A-G]\.\d+)?)")
THREESTUDIO = re.compile(r"threestudio\.md,? §(\d+(?:\.\d+)?)")
DOC_PATH = re.compile(r"\bdocs/([a-z_]+\.md)")


def _headings(name: str) -> set:
    out = set()
    for line in (DOCS / name).read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{2,4} (§?[A-Z0-9]+(?:\.\d+)?)\.? ", line)
        if m:
            out.add(m.group(1).lstrip("§"))
    return out


def _numbers(spec: str) -> list:
    out = []
    for part in re.split(r"\s*(?:,|and)\s*", spec):
        if re.fullmatch(r"\d+\s*[-–]\s*\d+", part):
            a, b = (int(x) for x in re.split(r"[-–]", part))
            out += list(range(a, b + 1))
        elif part.strip():
            out.append(int(part))
    return out


def _sections(spec: str) -> list:
    parts = [s.strip() for s in spec.split("-")]
    if len(parts) == 2 and parts[0][:1] == parts[1][:1]:  # "D.1-D.2"
        letter, a, b = parts[0][0], int(parts[0][2:]), int(parts[1][2:])
        return [f"{letter}.{i}" for i in range(a, b + 1)]
    return parts


def _citations():
    return _citations_of(SOURCES)


def _citations_of(paths):
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(ROOT) if ROOT in path.parents else path
        for m in DECISION.finditer(text):
            for n in _numbers(m.group(1)):
                yield rel, "decisions.md", str(n)
        for m in ALGORITHMS.finditer(text):
            for s in _sections(m.group(1)):
                yield rel, "algorithms.md", s
        for m in THREESTUDIO.finditer(text):
            yield rel, "threestudio.md", m.group(1)
        for m in DOC_PATH.finditer(text):
            yield rel, m.group(1), None


def test_docs_exist_and_are_numbered():
    assert {"decisions.md", "algorithms.md", "threestudio.md"} <= {
        p.name for p in DOCS.glob("*.md")
    }
    numbers = sorted(int(h) for h in _headings("decisions.md") if h.isdigit())
    assert numbers == list(range(1, len(numbers) + 1)), "decisions are numbered 1..N without gaps"


def test_every_citation_resolves_to_a_heading():
    headings = {
        name: _headings(name) for name in ("decisions.md", "algorithms.md", "threestudio.md")
    }
    cited, missing = 0, []
    for rel, doc, section in _citations():
        cited += 1
        if not (DOCS / doc).is_file():
            missing.append(f"{rel}: docs/{doc} does not exist")
        elif section is not None and section not in headings[doc]:
            missing.append(f"{rel}: {doc} has no heading {section}")
    assert cited > 150  # the code cites its choices; a parser that finds nothing proves nothing
    assert not missing, "\n".join(sorted(set(missing)))


@pytest.mark.parametrize(
    "spec, expected", [("7-11", [7, 8, 9, 10, 11]), ("1, 2, 7", [1, 2, 7]), ("14", [14])]
)
def test_decision_ranges_expand(spec, expected):
    assert _numbers(spec) == expected


def test_a_dangling_citation_is_reported(tmp_path):
    fake = tmp_path / "x.py"
    fake.write_text("# see decision 999, decisions.md 3 and algorithms.md Z.9\n")
    found = sorted((d, s) for _, d, s in _citations_of([fake]))
    assert found == [("decisions.md", "3"), ("decisions.md", "999")]
    assert "999" not in _headings("decisions.md") and "3" in _headings("decisions.md")
