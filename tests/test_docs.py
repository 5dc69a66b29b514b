"""The documentation: a short README, pages in docs/, and no relative link that leads nowhere.

Links are read from README.md, docs/*.md and bench/README.md, outside code. Each relative link
must name an existing file, and an anchor into a markdown file must name one of its headings,
slugged the way GitHub does (lowercase, spaces become '-', punctuation other than '-' and '_'
dropped, repeats numbered -1, -2, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.helpers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 12 * 1024

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text] (one level of nested brackets)
    r"\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\s*\)"  # (target "optional title")
)
_REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HTML_HREF = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
_HTML_ANCHOR = re.compile(r"""<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.I)
_ATX_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_SKIPPED_SCHEMES = ("http://", "https://", "mailto:")


def doc_files() -> list[Path]:
    """Every markdown file whose links are checked."""
    files = [README, *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md"]
    return [f for f in files if f.exists()]


def _outside_fences(text: str) -> Iterator[str]:
    """The lines of a markdown text that are not inside a fenced code block."""
    fence = ""
    for line in text.splitlines():
        opened = _FENCE.match(line)
        if fence:
            marker = opened.group(1) if opened else ""
            if marker[:1] == fence[0] and len(marker) >= len(fence):
                fence = ""
        elif opened:
            fence = opened.group(1)
        else:
            yield line


def links(path: Path) -> list[str]:
    """The link targets of a markdown file, in order (inline, reference-style and HTML)."""
    found: list[str] = []
    for line in _outside_fences(path.read_text(encoding="utf-8")):
        line = _CODE_SPAN.sub("", line)
        found += _INLINE_LINK.findall(line)
        found += _HTML_HREF.findall(line)
        reference = _REFERENCE_LINK.match(line)
        if reference:
            found.append(reference.group(1))
    return [target for target in found if target]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file offers: its headings' slugs (repeats numbered) and HTML ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _outside_fences(path.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        heading = _ATX_HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken(source: Path, target: str, root: Path = ROOT) -> str | None:
    """Why a link from ``source`` leads nowhere, or None when it resolves (or is not relative)."""
    if target.lower().startswith(_SKIPPED_SCHEMES):
        return None
    file_part, _, anchor = target.partition("#")
    file_part, anchor = unquote(file_part), unquote(anchor)
    if not file_part:
        resolved = source
    elif file_part.startswith("/"):
        resolved = root / file_part.lstrip("/")
    else:
        resolved = source.parent / file_part
    if not resolved.exists():
        return f"{target!r}: no such file {resolved}"
    if anchor and resolved.is_file() and resolved.suffix.lower() == ".md":
        offered = sorted(anchors(resolved))
        if anchor not in offered:
            return f"{target!r}: no heading #{anchor} in {resolved.name} (it has: {offered})"
    return None


def _link_cases() -> list[Any]:
    cases = []
    for path in doc_files():
        name = path.relative_to(ROOT).as_posix()
        for target in dict.fromkeys(links(path)):  # each link once per file
            cases.append(pytest.param(path, target, id=f"{name} -> {target}"))
    return cases


def test_readme_is_short() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, over {README_MAX_BYTES}"


@pytest.mark.parametrize("command", ["make serve", "make test"])
def test_readme_shows_the_setup_commands(command: str) -> None:
    assert command in README.read_text(encoding="utf-8"), f"README.md does not show {command!r}"


def test_docs_has_pages() -> None:
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    assert len(pages) >= 5, f"docs/ holds {len(pages)} markdown pages: {pages}"


def test_readme_links_every_docs_page() -> None:
    linked = {
        (README.parent / unquote(t.partition("#")[0])).resolve()
        for t in links(README)
        if not t.lower().startswith(_SKIPPED_SCHEMES) and t.partition("#")[0]
    }
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md links no docs page named {missing}"


@pytest.mark.parametrize(("source", "target"), _link_cases())
def test_relative_link_resolves(source: Path, target: str) -> None:
    problem = broken(source, target)
    assert problem is None, f"{source.relative_to(ROOT).as_posix()}: broken link {problem}"


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    """The checks above can fail: a missing file and a missing heading are both reported."""
    other = tmp_path / "other.md"
    other.write_text("# Other page\n\n## A `code`: heading, here\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Same\n\n## Same\n\n"
        "[ok](other.md) [ok](other.md#a-code-heading-here) [ok](#same-1) [ok](https://x.invalid/y)\n"
        "[gone](missing.md) [gone](other.md#no-such-heading) [gone](#same-2)\n"
        "`[not a link](missing-in-code.md)`\n\n```\n[not a link](missing-in-fence.md)\n```\n",
        encoding="utf-8",
    )
    targets = links(page)
    assert "missing-in-code.md" not in targets and "missing-in-fence.md" not in targets
    failing = [t for t in targets if broken(page, t, root=tmp_path)]
    assert failing == ["missing.md", "other.md#no-such-heading", "#same-2"]
    assert slug("Processes: `--workers N`") == "processes---workers-n"
    assert slug("GPU placement: one `config.pbtxt`") == "gpu-placement-one-configpbtxt"
