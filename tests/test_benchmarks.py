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
