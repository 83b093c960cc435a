"""The manual holds together: every page of docs/ is linked from the README, and every relative
link in the README and in docs/ leads to a file that exists, and to a heading in it when the
link names one (GitHub's heading anchors)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from support import ROOT

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


@dataclass(frozen=True)
class Link:
    source: Path
    target: str

    def __str__(self) -> str:
        return f"{self.source.name}: {self.target}"


def _prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link text kept, lowercase, punctuation dropped
    (letters, digits, '-' and '_' stay), each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for match in _HEADING.finditer(_FENCE.sub("", markdown.read_text())):
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(markdown: Path) -> list[Link]:
    links = (Link(markdown, m.group(1)) for m in _LINK.finditer(_prose(markdown.read_text())))
    return [link for link in links if not _EXTERNAL.match(link.target)]


def manual(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def broken_links(root: Path) -> list[str]:
    broken = []
    for markdown in manual(root):
        for link in relative_links(markdown):
            path, _, anchor = link.target.partition("#")
            target = (markdown.parent / unquote(path)).resolve() if path else markdown
            if not target.exists():
                broken.append(f"{link} (no such file)")
            elif anchor and (target.suffix != ".md" or unquote(anchor) not in anchors(target)):
                broken.append(f"{link} (no such heading)")
    return broken


def unlinked_pages(root: Path) -> set[str]:
    readme = root / "README.md"
    linked = {
        (readme.parent / unquote(link.target.partition("#")[0])).resolve()
        for link in relative_links(readme)
    }
    return {page.name for page in (root / "docs").glob("*.md") if page.resolve() not in linked}


def test_every_docs_page_is_linked_from_the_readme():
    pages = {page.name for page in (ROOT / "docs").glob("*.md")}
    assert {"architecture.md", "errors.md", "settings.md", "tus.md"} <= pages
    assert unlinked_pages(ROOT) == set()


def test_every_relative_link_in_the_readme_and_docs_resolves():
    links = [link for markdown in manual(ROOT) for link in relative_links(markdown)]
    assert len(links) >= 40  # the README's table of contents and the pages' cross-references
    assert any("#" in link.target for link in links)  # anchors are checked, not only files
    assert broken_links(ROOT) == []


def test_the_checks_can_fail(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (tmp_path / "README.md").write_text(
        "# Project\n\n"
        "[A](docs/a.md), [gone](docs/missing.md), [a heading](docs/a.md#real-heading),\n"
        "[no heading](docs/a.md#no-such-heading), [web](https://example.org/x.md),\n"
        "`[in code](docs/code-span.md)`\n\n"
        "```md\n[in a block](docs/fenced.md)\n```\n"
    )
    (docs / "a.md").write_text(
        "# A\n\n## Real heading\n\n## Real heading\n\n[up](../README.md#project), "
        "[twice](#real-heading-1), [self](#nowhere)\n"
    )
    (docs / "b.md").write_text("# B: linked from nowhere\n\n[a](a.md)\n")
    assert broken_links(tmp_path) == [
        "README.md: docs/missing.md (no such file)",
        "README.md: docs/a.md#no-such-heading (no such heading)",
        "a.md: #nowhere (no such heading)",
    ]
    assert unlinked_pages(tmp_path) == {"b.md"}


def test_anchors_are_githubs():
    assert github_slug("Offline-first client (`outbox`)") == "offline-first-client-outbox"
    assert github_slug("Two commands") == "two-commands"
    assert (
        github_slug("Results (2026-11-22, 2-core / 24 GiB)") == "results-2026-11-22-2-core--24-gib"
    )
    assert github_slug("See [Parser](parser.md) first") == "see-parser-first"
