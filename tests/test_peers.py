"""benchmarks/peers.py in its smoke mode: every runner's row, on the same test samples, with the ratio columns."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
TRANSFERKIT = {"transferkit defaults", "transferkit linear-probe", "transferkit two-stage",
               "transferkit --budget 60"}
PEERS = {"fashion-mnist 2/class": TRANSFERKIT | {"sklearn logreg", "timm fine-tune", "fastai fine_tune"},
         "bbc-news 2/class": TRANSFERKIT | {"sklearn logreg", "HF Trainer"}}


@pytest.mark.slow
def test_peers_smoke(tmp_path, monkeypatch, capsys):
    """Real EfficientNet-Lite0 and MiniLM weights, 2 per class, 1 epoch each (about 30 CPU-seconds, 1 thread)."""
    import transferkit.api
    from transferkit import prepare

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("peers")
    splits, cuts = [], []  # what every runner loaded, and the test samples each one scored

    def spy(function, record):
        def wrapped(*args, **kwargs):
            found = function(*args, **kwargs)
            record.append(found)
            return found
        return wrapped

    monkeypatch.setattr(prepare, "load_data", spy(prepare.load_data, splits))
    monkeypatch.setattr(transferkit.api, "take_per_class", spy(transferkit.api.take_per_class, cuts))
    monkeypatch.setattr(module, "take_per_class", spy(module.take_per_class, cuts))
    out = tmp_path / "peers.json"
    rows = module.main(["--smoke", "--threads", "1", "--out", str(out)])
    table = capsys.readouterr().out
    sys.modules.pop("peers", None)

    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))
    header = next(line for line in table.splitlines() if line.startswith("dataset"))
    assert [c.strip() for c in header.split("|")] == module.COLUMNS
    assert {"acc_diff", "time_ratio"} <= set(module.COLUMNS)
    for dataset, runners in PEERS.items():
        found = {row["runner"]: row for row in rows if row["dataset"] == dataset}
        assert set(found) == runners
        reference = found.pop("transferkit defaults")
        assert 0 <= reference["test_accuracy"] <= 1 and reference["seconds"] > 0
        assert reference["acc_diff"] == 0 and reference["time_ratio"] == 1
        fastai = found.pop("fastai fine_tune", None)
        if fastai is not None and module.fastai_missing():
            assert fastai["settings"].startswith("not installed (pip install fastai)")
            assert fastai.get("test_accuracy") is None
        elif fastai is not None:
            found["fastai fine_tune"] = fastai
        for runner, row in found.items():
            assert "test_accuracy" in row, f"{runner}: {row['settings']}"  # a peer that failed has none
            assert 0 <= row["test_accuracy"] <= 1 and row["seconds"] > 0
            # every peer scored the same test samples as transferkit: 2 per class of the same test split
            assert row["test_n"] == reference["test_n"] == 2 * (10 if "fashion" in dataset else 5)
            assert row["acc_diff"] == pytest.approx(row["test_accuracy"] - reference["test_accuracy"])
            assert row["time_ratio"] == pytest.approx(row["seconds"] / reference["seconds"])

    # the same samples, not only as many: every runner (transferkit's two runs included) loaded the same split and
    # scored the same test samples
    for classes in {tuple(split.classes) for split in splits}:
        loaded = {(tuple(s.train.names), tuple(s.train.labels)) for s in splits if tuple(s.classes) == classes}
        scored = {(tuple(t.names), tuple(t.labels)) for t, _ in cuts if tuple(t.classes) == classes}
        assert len(loaded) == 1 and len(scored) == 1
    runs = [len(PEERS[d]) - (d.startswith("fashion") and module.fastai_missing() is not None) for d in PEERS]
    assert len(splits) == len(cuts) == sum(runs)

