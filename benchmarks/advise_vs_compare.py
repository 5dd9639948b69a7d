"""Check `advise` against `compare`: for every training-set size of one or more compare reports, what advise
recommends at that size (`advise --per-class N`) and how that strategy ranked in compare there.

    python benchmarks/advise_vs_compare.py --reports reports/fmnist reports/digits reports/bbc

Measurements are cached in the results JSON (``measurements``), so after changing the rules in
``transferkit.experiments.advise.recommend`` a rerun re-applies them in seconds (``--remeasure`` to measure
again). "full" rows give the advice for the whole dataset next to compare's largest size.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, parser, report  # noqa: E402

from transferkit.experiments.advise import Measurements, measure, recommend  # noqa: E402
from transferkit.experiments.grid import CellResult, ranking  # noqa: E402


def check(report_dir: Path, cache: dict, remeasure: bool = False, measurer=measure) -> list[dict]:
    saved = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
    data, model = saved["data"], saved["model"]
    results = [CellResult(**row) for row in saved["cells"]]
    transfer_sizes = sorted({r.per_class for r in results if r.strategy != "scratch"})
    rows = []
    for n in [*transfer_sizes, None]:
        key = f"{data}|{model}|{n or 'full'}"
        if remeasure or key not in cache:
            cache[key] = asdict(measurer(data, model, per_class=n))
        advice = recommend(Measurements(**cache[key]))
        compared_at = n or transfer_sizes[-1]
        ranked = ranking(results, compared_at)
        names = [row.strategy for row in ranked]
        rank = names.index(advice.strategy) + 1 if advice.strategy in names else None
        best = ranked[0]
        chosen = ranked[rank - 1] if rank else None
        gap = best.accuracy - chosen.accuracy if chosen else None
        rows.append({"data": data, "per_class": n or "full", "compare_at": compared_at,
                     "probe": cache[key]["probe_accuracy"], "domain": cache[key]["domain_distance"],
                     "samples": cache[key]["samples"], "advised": advice.strategy, "rank": rank,
                     "of": len(ranked), "advised_acc": chosen.accuracy if chosen else None, "best": best.strategy,
                     "best_acc": best.accuracy, "gap": gap,
                     "within_spread": gap is not None and gap <= best.spread + chosen.spread,
                     "advised_s": chosen.seconds if chosen else None, "best_s": best.seconds,
                     "ranking": " > ".join(f"{row.strategy} {row.accuracy:.3f}" for row in ranked)})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--reports", nargs="+", type=Path, default=[], help="compare report folders (results.json)")
    p.add_argument("--remeasure", action="store_true", help="measure again instead of using cached measurements")
    args = p.parse_args(argv)
    out = args.out or RESULTS / "advise_vs_compare.json"
    cache = json.loads(out.read_text())["measurements"] if out.is_file() and not args.remeasure else {}
    measurer = measure
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.reports = [_smoke_report(Path(tmp))]
            measurer = _smoke_measure
        rows = [row for folder in args.reports for row in check(folder, cache, args.remeasure, measurer)]
        report("advise_vs_compare", rows, ["data", "per_class", "samples", "probe", "domain", "advised", "rank", "of",
                                           "gap", "within_spread", "advised_s", "best_s", "ranking"], out)
    saved = json.loads(out.read_text())
    saved["measurements"] = cache
    out.write_text(json.dumps(saved, indent=2))
    return rows


def _smoke_report(folder: Path) -> Path:
    cells = [CellResult(s, n, seed, acc + 0.01 * seed, acc, 1.0, [{"epoch": 1, "seconds": 1.0, "val_accuracy": acc}])
             for s, n, acc in [("scratch", 10, 0.3), ("linear-probe", 10, 0.8), ("two-stage", 10, 0.7),
                               ("scratch", 100, 0.6), ("linear-probe", 100, 0.85), ("two-stage", 100, 0.9)]
             for seed in (0, 1)]
    (folder / "results.json").write_text(json.dumps({"cells": [asdict(c) for c in cells], "data": "smoke",
                                                     "model": "m"}))
    return folder


def _smoke_measure(data: str, model: str, per_class: int | None = None) -> Measurements:
    n = per_class or 300
    return Measurements("image", 12 * n, 10, n, n, 28, 224, 0.8, 0.7, 1.0, "feature statistics")


if __name__ == "__main__":
    main()
