"""The README's tables from `compare` reports: per size, the accuracies (with intervals) of every strategy at its
own recipe, both data-efficiency factors of each transfer strategy, and the wall time; then what the LR search
changed across all the reports.

    python benchmarks/compare_tables.py benchmarks/results/compare/fashion-mnist benchmarks/results/compare/digits
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import parser  # noqa: E402


def accuracy(saved: dict, strategy: str, budget: str, n: int) -> str:
    cells = [c for c in saved["cells"] if c["strategy"] == strategy and c["budget"] == budget and c["per_class"] == n]
    if not cells:
        return "-"
    mean = sum(c["test_accuracy"] for c in cells) / len(cells)
    bounds = next((row["interval"] for row in saved.get("accuracy_intervals", [])
                   if (row["strategy"], row["budget"], row["per_class"]) == (strategy, budget, n)), None)
    return f"{mean:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "") + \
        ("" if len(cells) == 3 else f" ({len(cells)} seed{'s' if len(cells) > 1 else ''})")


def factor(entry: dict | None) -> str:
    if not entry:
        return "-"
    if entry["factor"] is None:
        text = f"> {entry['scratch_largest'] / entry.get('per_class', 1):.1f}x" if "per_class" in entry else "> max"
    else:
        text = f"{entry['factor']:.1f}x"
    if entry.get("interval"):
        low, high = entry["interval"]
        text += f" [{'never' if low is None else f'{low:.1f}x'}, {'never' if high is None else f'{high:.1f}x'}]"
    return text


def table(report: Path) -> str:
    saved = json.loads((report / "results.json").read_text(encoding="utf-8"))
    transfer = sorted({c["strategy"] for c in saved["cells"]} - {"scratch"})
    sizes = sorted({c["per_class"] for c in saved["cells"] if c["strategy"] != "scratch"})
    factors = {(f["strategy"], f["per_class"]): f for f in saved["factors"]}
    head = ["per class", "scratch, converged", *transfer, *(f"scratch, {t}'s budget" for t in transfer),
            *(f"{t}: factor converged / equal budget" for t in transfer), "wall s (mean per run): " +
            " / ".join(["scratch", *transfer])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in sizes:
        row = [str(n), accuracy(saved, "scratch", "", n), *(accuracy(saved, t, "", n) for t in transfer),
               *(accuracy(saved, "scratch", t, n) for t in transfer)]
        for t in transfer:
            f = factors.get((t, n), {})
            for view in ("converged", "equal_budget"):
                if f.get(view):
                    f[view]["per_class"] = n
            row.append(f"{factor(f.get('converged'))} / {factor(f.get('equal_budget'))}")
        seconds = []
        for s in ["scratch", *transfer]:
            cells = [c["seconds"] for c in saved["cells"] if c["strategy"] == s and not c["budget"]
                     and c["per_class"] == n]
            seconds.append(f"{sum(cells) / len(cells):.0f}" if cells else "-")
        lines.append("| " + " | ".join(row + [" / ".join(seconds)]) + " |")
    extra = sorted({c["per_class"] for c in saved["cells"] if c["strategy"] == "scratch"} - set(sizes))
    for n in extra:
        lines.append(f"| {n} (scratch only) | {accuracy(saved, 'scratch', '', n)} | " + " | ".join(
            ["-"] * len(transfer) + [accuracy(saved, "scratch", t, n) for t in transfer] + ["-"] * len(transfer)) +
            " | - |")
    own = [c for c in saved["cells"] if c["strategy"] == "scratch" and not c["budget"] and c.get("stopped")]
    if own:  # a converged baseline that ran out of budget instead is not converged: say so
        ended = {}
        for c in own:
            ended.setdefault(c["stopped"], []).append(c["per_class"])
        lines.append("\nscratch, converged: " + "; ".join(
            f"{len(v)} run{'s' if len(v) > 1 else ''} ended by {k} (per class {', '.join(map(str, sorted(set(v))))})"
            for k, v in sorted(ended.items())) + ".")
    wall, compute = saved.get("wall_seconds"), saved.get("compute_seconds")
    lines.append(f"\nWall time of the grid: {wall / 3600:.1f} h; compute, every run incl. the LR search: "
                 f"{compute / 3600:.1f} h." if wall and compute else "")
    return "\n".join(lines)


def lr_search_summary(reports: list[Path]) -> str:
    rows = []
    for report in reports:
        path = report / "lr_search.json"
        if path.is_file():
            for key, search in json.loads(path.read_text(encoding="utf-8")).items():
                if "default_test_accuracy" in search:
                    rows.append((report.name, key, search))
    if not rows:
        return "no LR search recorded"
    changed = [r for r in rows if abs(r[2]["chosen"] - r[2]["default"]) > 1e-12]
    gains = [r[2]["chosen_test_accuracy"] - r[2]["default_test_accuracy"] for r in changed]
    effect = (f"; seed-0 test accuracy, chosen minus recipe's LR: mean {sum(gains) / len(gains):+.3f}, from "
              f"{min(gains):+.3f} to {max(gains):+.3f}" if gains else "")
    lines = [f"LR search: {len(rows)} (strategy, budget, size) groups; the chosen LR differs from the recipe's in "
             f"{len(changed)}{effect}."]
    for data, key, s in changed:
        lines.append(f"- {data} {key}: {s['option']} {s['default']:g} -> {s['chosen']:g}, test "
                     f"{s['default_test_accuracy']:.3f} -> {s['chosen_test_accuracy']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("reports", nargs="*", type=Path, help="compare report folders (results.json, lr_search.json)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        reports = [_smoke_report(Path(tmp))] if args.smoke else args.reports
        text = "\n\n".join([f"### {r.name}\n\n{table(r)}" for r in reports] + [lr_search_summary(reports)])
    print(text)
    return text


def _smoke_report(folder: Path) -> Path:
    cells = [{"strategy": s, "budget": b, "per_class": n, "seed": 0, "test_accuracy": a, "seconds": 1.0,
              "stopped": "plateau" if s == "scratch" and not b else ""}
             for s, b, n, a in [("scratch", "", 10, 0.5), ("scratch", "", 100, 0.8), ("linear-probe", "", 10, 0.7),
                                ("scratch", "linear-probe", 10, 0.2), ("scratch", "linear-probe", 100, 0.3)]]
    factors = [{"strategy": "linear-probe", "per_class": 10,
                "converged": {"factor": 4.6, "scratch_largest": 100, "interval": [2.0, None]},
                "equal_budget": {"factor": None, "scratch_largest": 100}}]
    (folder / "results.json").write_text(json.dumps({"cells": cells, "factors": factors}))
    (folder / "lr_search.json").write_text(json.dumps({"scratch||10": {
        "option": "lr", "default": 3e-3, "chosen": 1e-3, "default_test_accuracy": 0.5, "chosen_test_accuracy": 0.55}}))
    return folder


if __name__ == "__main__":
    main()
