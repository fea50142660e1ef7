"""Move every ``[name](../path.py#L<n>)`` link in docs/*.md to the line where ``name`` is
defined now. Run after code moves: ``python docs/relink.py``; tests/test_docs.py checks."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent
LINE_LINK = re.compile(r"\[(`?)([A-Za-z_][\w.]*)(?:\(\))?\1\]\(([^()\s#]+\.py)#L(\d+)(?:-L\d+)?\)")
DEFINITION = re.compile(r"^(\s*)(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)\b")


def definition_line(source: list[str], name: str) -> int | None:
    """1-based line of ``def``/``class`` ``name`` (dotted: nested in those classes)."""
    start, end, indent = 0, len(source), -1
    for part in name.split("."):
        for i in range(start, end):
            match = DEFINITION.match(source[i])
            if match and len(match.group(1)) > indent and match.group(2) == part:
                indent, start = len(match.group(1)), i + 1
                end = next(
                    (j for j in range(i + 1, end)
                     if source[j].strip() and len(source[j]) - len(source[j].lstrip()) <= indent),
                    end,
                )  # fmt: skip
                break
        else:
            return None
    return start


def relink(page: Path) -> int:
    """Rewrite the page's line anchors in place; returns how many changed."""
    changed = 0

    def fix(match: re.Match) -> str:
        nonlocal changed
        target = (page.parent / match.group(3)).resolve()
        if not target.is_file():
            return match.group(0)
        line = definition_line(target.read_text(encoding="utf-8").splitlines(), match.group(2))
        if line is None or str(line) == match.group(4):
            return match.group(0)
        changed += 1
        return match.group(0).replace(f"#L{match.group(4)}", f"#L{line}", 1)

    text = page.read_text(encoding="utf-8")
    page.write_text(LINE_LINK.sub(fix, text), encoding="utf-8")
    return changed


if __name__ == "__main__":
    for page in sorted(DOCS.glob("*.md")):
        if n := relink(page):
            print(f"{page.name}: {n} anchors moved")
