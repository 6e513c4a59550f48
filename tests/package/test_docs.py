"""The repository stands on its own: nothing points outside it, and docs/ links resolve.

- No tracked file refers to material that is not in the repository (an external specification,
  notes kept beside the checkout, tools that were never committed): such a pointer tells a reader
  to look somewhere they cannot. Cite the pages in docs/ instead.
- Every `docs/<page>.md` named anywhere in the repository exists.
- Every Markdown link in docs/*.md and README.md to a repository file resolves (and its #anchor,
  if any, names a heading of the target page); every repository path written in backticks in
  docs/*.md exists.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT

SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache"}

# Pointers outside the repository, spelled in pieces so that this file does not match itself.
OUTSIDE = {
    "the external specification": re.compile(r"\b" + "SP" + r"EC\b"),
    "the old launcher-contract notes": re.compile(re.escape("COMMON" + ".md")),
    "an uncommitted tool": re.compile(re.escape("tools/" + "ptxas")),
    "a folder beside the checkout": re.compile(re.escape(".." + "/shared") + "|" + re.escape("/work" + "/shared")),
    "the papers' text files": re.compile(r"papers/(armour|vision_xformers)" + r"\.txt"),
}
DOC_MENTION = re.compile(r"(?<![\w/.])docs/([\w-]+\.md)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`((?:armour_kernels|python_ref|csrc|tests|bench|docs)/[^`\s<>{}*]+\.\w+)`")


def tracked_files() -> list[Path]:
    """The repository's files: `git ls-files` in a checkout, else every file under ROOT (an sdist)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        files = [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*") if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    return [p for p in files if p.is_file()]


def text_of(path: Path) -> str | None:
    """The file's text, or None for binary files."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def repository_texts() -> dict[Path, str]:
    this = Path(__file__).resolve()
    texts = {}
    for path in tracked_files():
        if path.resolve() == this:
            continue
        text = text_of(path)
        if text is not None:
            texts[path] = text
    return texts


def doc_pages() -> list[Path]:
    return sorted((ROOT / "docs").glob("*.md"))


def heading_anchors(page: Path) -> set[str]:
    """GitHub-style anchors of a Markdown page's headings."""
    anchors = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            title = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def test_docs_exist():
    names = {p.name for p in doc_pages()}
    assert "README.md" in names, "docs/README.md (the index) is missing"
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    unlisted = sorted(name for name in names - {"README.md"} if f"]({name})" not in index)
    assert not unlisted, f"docs/README.md does not list {unlisted}"


def test_nothing_points_outside_the_repository():
    hits = []
    for path, text in repository_texts().items():
        for number, line in enumerate(text.splitlines(), 1):
            for what, pattern in OUTSIDE.items():
                if pattern.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()[:100]}")
    assert not hits, "pointers to material outside the repository (cite docs/ instead):\n" + "\n".join(hits)


def test_every_docs_page_named_exists():
    pages = {p.name for p in doc_pages()}
    missing = []
    for path, text in repository_texts().items():
        for number, line in enumerate(text.splitlines(), 1):
            missing += [f"{path.relative_to(ROOT)}:{number}: docs/{name}"
                        for name in DOC_MENTION.findall(line) if name not in pages]
    assert not missing, "references to docs pages that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", [*doc_pages(), ROOT / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve(page):
    if not page.exists():
        pytest.skip(f"{page.name} not present")
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page.resolve()
        if ROOT.resolve() not in (resolved, *resolved.parents):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"broken links in {page.relative_to(ROOT)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: p.name)
def test_code_paths_in_docs_exist(page):
    missing = [p for p in CODE_PATH.findall(page.read_text(encoding="utf-8")) if not (ROOT / p).exists()]
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"
