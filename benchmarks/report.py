"""The results table (Markdown) and the JSON written for tracking."""

from __future__ import annotations

import json
import os
import time

OURS = "numpyllm"


def ratio(row: dict, other: str) -> float | None:
    """numpyllm relative to ``other``: a speed ratio for tokens/s and ms rows (> 1: numpyllm is
    faster), a size ratio for memory rows (< 1: numpyllm uses less)."""
    values = row["values"]
    if OURS not in values or other not in values:
        return None
    ours, theirs = values[OURS]["median"], values[other]["median"]
    if row["unit"] == "ms":
        return theirs / ours if ours > 0 else None
    return ours / theirs if theirs > 0 else None


def best_torch(row: dict) -> str | None:
    """The faster (or, for memory, smaller) of the PyTorch-eager sides of a row."""
    torch_sides = [s for s in row["values"] if s.startswith("torch")]
    if not torch_sides:
        return None
    better = max if row["higher_is_better"] else min
    return better(torch_sides, key=lambda s: row["values"][s]["median"])


def add_ratios(rows: list) -> None:
    for row in rows:
        row["ratios"] = {s: ratio(row, s) for s in row["values"] if s != OURS}
        best = best_torch(row)
        row["best_torch"] = best
        row["ratio_vs_best_torch"] = ratio(row, best) if best else None


def _fmt(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def table(rows: list) -> str:
    """One Markdown table per section; each cell is 'median ±spread%'."""
    out = []
    for section in dict.fromkeys(r["section"] for r in rows):
        group = [r for r in rows if r["section"] == section]
        sides = list(dict.fromkeys(s for r in group for s in r["values"]))
        others = [s for s in sides if s != OURS]
        unit = group[0]["unit"]
        head = [f"{section} ({unit})", *sides, *[f"ratio vs {s}" for s in others]]
        if section == "train":
            head += ["numpyllm GFLOP/s", "% of sgemm peak"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in group:
            cells = [r["name"]]
            for s in sides:
                v = r["values"].get(s)
                cells.append(f"{_fmt(v['median'])} ±{100 * v['spread']:.0f}%" if v else "—")
            for s in others:
                x = r["ratios"].get(s)
                cells.append(
                    "—" if x is None else f"**{x:.2f}×**" if s == r["best_torch"] else f"{x:.2f}×"
                )
            if section == "train":
                cells.append(f"{r['gflops'][OURS]:.1f}")
                cells.append(f"{100 * r['fraction_of_peak'][OURS]:.0f}%")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(
        "ratio = numpyllm / other: speed for tokens/s and ms rows (> 1 means numpyllm is faster), "
        "size for MiB rows (< 1 means numpyllm uses less); bold = against the faster PyTorch "
        "eager variant. ± is (max - min) / median over the alternating rounds."
    )
    return "\n".join(out)


def write_json(path: str, meta: dict, rows: list) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": rows, "time": time.time()}, f, indent=1, default=str)
    os.replace(tmp, path)
