"""The demo runs offline on the real built-in model and dataset (shrunk here to seconds)."""

from __future__ import annotations

from transferkit.demo import run_demo


def test_demo_trains_three_strategies_and_reports_them(tmp_path):
    rows = run_demo(tmp_path, per_class=3, image_size=32, epochs=1, progress=False)
    assert [r["strategy"] for r in rows] == ["scratch", "linear-probe", "two-stage"]
    for row in rows:
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["seconds"] > 0
        assert (tmp_path / row["strategy"] / "transferkit.json").is_file()
