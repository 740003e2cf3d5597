"""The documentation's relative links: README.md, CHANGELOG.md and docs/*.md, read as text (no network).

The manual was split from the README into docs/, so a link or an anchor that no longer points anywhere
would go unnoticed: every relative link must name an existing file and, with `#anchor`, a heading of
that file (GitHub's anchors). The README stays the front door with the two commands of the Makefile.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"#{1,6}\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked (neither holds links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            lines.append(re.sub(r"`[^`]*`", "``", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped except - and _, spaces -> -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.fullmatch(line)
        if match:
            base = slug(match[1])
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def relative_links(path: Path) -> list[str]:
    return [target for line in prose(path.read_text()) for target in LINK.findall(line)
            if not EXTERNAL.match(target)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file_and_heading(doc: Path) -> None:
    assert doc.is_file(), f"{doc.relative_to(REPO)} is missing"
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{target}: no file {file_part}")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(REPO / target.partition("#")[0]).resolve() for target in relative_links(REPO / "README.md")}
    unlinked = [p.name for p in DOCS[1:] if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link to {unlinked}"


def test_readme_keeps_the_two_commands_of_a_fresh_machine() -> None:
    """The Makefile and .ci/run point at the README's `make demo` and `make test`."""
    text = (REPO / "README.md").read_text()
    assert "make demo" in text and "make test" in text


@pytest.mark.parametrize(("heading", "expected"), [
    pytest.param("The `environments/` format", "the-environments-format", id="code"),
    pytest.param("KubeRay 1.5–1.7: kinds and fields", "kuberay-1517-kinds-and-fields", id="punctuation"),
    pytest.param("Secrets, credentials and the HTTP endpoints", "secrets-credentials-and-the-http-endpoints",
                 id="commas"),
    pytest.param("The real KubeRay operator (`-m operator`)", "the-real-kuberay-operator--m-operator",
                 id="parentheses"),
    pytest.param("Two commands", "two-commands", id="plain"),
])
def test_slug_follows_github(heading: str, expected: str) -> None:
    assert slug(heading) == expected
