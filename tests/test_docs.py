"""The docs cannot rot silently: every relative link resolves, and every line anchor still
points at the ``def`` (or ``class``) its link names.

A link such as ``[attention_forward](../numpyllm/functional/attention.py#L131)`` must
lead to an existing file whose line 131 defines ``attention_forward``; a dotted name
(``[Block.backward](../numpyllm/models/gpt.py#L252)``) must be a ``def backward`` inside
``class Block``. A link to a heading (``page.md#some-heading``) must match a heading of
that page. Links inside code (fenced blocks and inline backticks) are not links and are
skipped. Fast and offline: it only reads files.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

LINK = re.compile(r"(?<!!)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(([^()\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINE_ANCHOR = re.compile(r"L(\d+)(?:-L(\d+))?")
NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
DEFINITION = re.compile(r"^(\s*)(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)\b")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line with inline code blanked) for every line outside fenced code."""
    lines, in_fence = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append((number, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)))
    return lines


def _links(page: Path) -> list[tuple[int, str, str]]:
    """(line number, link text, target) of every Markdown link on a page, outside code."""
    found = []
    for number, line in _prose_lines(page.read_text(encoding="utf-8")):
        for match in LINK.finditer(line):
            found.append((number, match.group(1), match.group(2)))
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    kept = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def _heading_anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    in_fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_fence or heading is None:
            continue
        slug = _slug(heading.group(1))
        n = counts.get(slug, 0)
        anchors.add(slug if n == 0 else f"{slug}-{n}")
        counts[slug] = n + 1
    return anchors


def _named_in(text: str) -> str | None:
    """The identifier a link's text names: backticks and a trailing "()" dropped."""
    name = text.strip().strip("`").strip()
    name = name.removesuffix("()")
    return name if NAME.fullmatch(name) else None


def _check_definition(source: list[str], line: int, name: str) -> str | None:
    """None if line ``line`` (1-based) of ``source`` defines ``name``, else what is wrong."""
    if not 1 <= line <= len(source):
        return f"line {line} does not exist (the file has {len(source)} lines)"
    *owners, leaf = name.split(".")
    match = DEFINITION.match(source[line - 1])
    if match is None or match.group(2) != leaf:
        return f"line {line} is {source[line - 1].strip()!r}, not the def of {leaf!r}"
    indent = len(match.group(1))
    for owner in reversed(owners):  # each enclosing class, innermost first
        for above in range(line - 2, -1, -1):
            outer = DEFINITION.match(source[above])
            if outer is not None and len(outer.group(1)) < indent:
                break
        else:
            return f"{leaf!r} at line {line} is not inside {owner!r}"
        if outer.group(2) != owner:
            return f"{leaf!r} at line {line} is inside {outer.group(2)!r}, not {owner!r}"
        indent, line = len(outer.group(1)), above + 1
    return None


def _problems(page: Path) -> list[str]:
    problems = []
    for number, text, target in _links(page):
        where = f"{page.name}:{number} [{text}]({target})"
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, fragment = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.exists():
            problems.append(f"{where}: {path_part} does not exist")
            continue
        if not fragment:
            continue
        anchor = LINE_ANCHOR.fullmatch(fragment)
        if anchor is not None:
            name = _named_in(text)
            if name is None:
                problems.append(f"{where}: a line anchor needs the defined name as link text")
                continue
            if not path.is_file():
                problems.append(f"{where}: a line anchor on a folder")
                continue
            source = path.read_text(encoding="utf-8").splitlines()
            wrong = _check_definition(source, int(anchor.group(1)), name)
            if wrong is not None:
                problems.append(f"{where}: {wrong}")
        elif path.suffix == ".md":
            if fragment not in _heading_anchors(path):
                problems.append(f"{where}: no heading with anchor #{fragment} in {path.name}")
        else:
            problems.append(f"{where}: unknown anchor #{fragment} (expected #L<line>)")
    return problems


# --------------------------------------------------------------------------- tests


def test_there_are_docs_with_an_index():
    assert (DOCS / "README.md").is_file()
    assert len(PAGES) > 1


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_link_resolves_and_every_line_anchor_names_its_def(page):
    problems = _problems(page)
    hint = "\n(after code moves, `python docs/relink.py` updates the line anchors)"
    assert not problems, "stale links in the docs:\n" + "\n".join(problems) + hint


def test_the_index_links_every_page():
    linked = {
        (DOCS / target.partition("#")[0]).resolve()
        for _, _, target in _links(DOCS / "README.md")
        if target.partition("#")[0]
    }
    missing = [p.name for p in PAGES if p.name != "README.md" and p.resolve() not in linked]
    assert not missing, f"docs/README.md does not link to {missing}"


def test_every_public_function_of_the_functional_core_is_documented():
    """Each public function in numpyllm/functional/ is linked, by line, from some page."""
    anchored: set[tuple[Path, str]] = set()
    for page in PAGES:
        for _, text, target in _links(page):
            path_part, _, fragment = target.partition("#")
            name = _named_in(text)
            if name and LINE_ANCHOR.fullmatch(fragment):
                anchored.add(((page.parent / path_part).resolve(), name.split(".")[-1]))
    missing = []
    for module in sorted((ROOT / "numpyllm" / "functional").glob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                if (module.resolve(), node.name) not in anchored:
                    missing.append(f"{module.name}: {node.name}")
    assert not missing, "functions with no section in docs/:\n" + "\n".join(missing)


# ------------------------------------------------------------- the checker's own logic


def test_check_definition_accepts_the_named_def_and_rejects_others():
    source = [
        "class Block:",
        "    def forward(self):",
        "        pass",
        "",
        "class Other:",
        "    def backward(self):",
        "        pass",
        "def attention_forward():",
    ]
    assert _check_definition(source, 8, "attention_forward") is None
    assert _check_definition(source, 2, "Block.forward") is None
    assert _check_definition(source, 6, "Other.backward") is None
    assert "not the def" in _check_definition(source, 7, "Other.backward")
    assert "inside 'Other'" in _check_definition(source, 6, "Block.backward")
    assert "does not exist" in _check_definition(source, 9, "attention_forward")


def test_slug_follows_github():
    assert _slug("Why the max-shift") == "why-the-max-shift"
    assert _slug("Cross-entropy, `ignore_index` and the fused backward") == (
        "cross-entropy-ignore_index-and-the-fused-backward"
    )
    assert _slug("O(T^2) memory") == "ot2-memory"


def test_links_in_code_are_ignored(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[a](x.py#L1) and `[b](y.py#L2)`\n```\n[c](z.py#L3)\n```\n![img](p.png)\n",
        encoding="utf-8",
    )
    assert [(text, target) for _, text, target in _links(page)] == [("a", "x.py#L1")]
