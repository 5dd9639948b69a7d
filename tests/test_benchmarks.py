"""Every benchmark runs in its tiny smoke mode, so the scripts cannot rot."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.mark.parametrize("name, key", [("feature_cache", "speedup"), ("train_step", "transferkit_vs_plain"),
                                       ("decoded_cache", "speedup"), ("gpu_bench", "per_s")])
def test_benchmark_smoke(name, key, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    out = tmp_path / f"{name}.json"
    rows = module.main(["--smoke", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["machine"]["torch"]
    assert any(isinstance(row.get(key), float) and row[key] > 0 for row in rows)
    sys.modules.pop(name, None)


def test_advise_vs_compare_ranks_the_advised_strategy(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("advise_vs_compare")
    rows = module.main(["--smoke", "--out", str(tmp_path / "check.json")])
    by_size = {row["per_class"]: row for row in rows}
    # 120 samples: linear-probe advised, and it ranked first of 3 at 10 per class
    assert by_size[10]["advised"] == "linear-probe" and by_size[10]["rank"] == 1 and by_size[10]["gap"] == 0
    # 1,200 samples on a far domain: two-stage advised, best at 100 per class
    assert by_size[100]["advised"] == "two-stage" and by_size[100]["rank"] == 1 and by_size[100]["of"] == 3
    assert by_size["full"]["compare_at"] == 100
    saved = json.loads((tmp_path / "check.json").read_text())
    assert set(saved["measurements"]) == {"smoke|m|10", "smoke|m|100", "smoke|m|full"}
    sys.modules.pop("advise_vs_compare", None)


@pytest.mark.slow
def test_serve_benchmark_smoke(tmp_path, monkeypatch):
    """Trains a tiny run, exports it, starts `transferkit serve` in subprocesses and load-tests them over loopback."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("serve")
    rows = module.main(["--smoke", "--out", str(tmp_path / "serve.json")])
    served = [row for row in rows if row["runtime"] in ("pytorch", "onnxruntime")]
    assert {(r["runtime"], r["batching"]) for r in served} == {("pytorch", "on"), ("onnxruntime", "off")}
    assert all(r["req_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in served)
    raw = next(row for row in rows if row["runtime"] == "raw model")
    assert raw["ort_vs_torch_b1"] > 0 and json.loads((tmp_path / "serve.json").read_text())["rows"]
    sys.modules.pop("serve", None)
