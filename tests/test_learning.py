"""Training learns: train → evaluate on a held-out test split (never the training files), accuracy well above chance.

The data are the colour-dominated images of ``conftest`` (3 classes, chance 1/3): a different noise seed for every
image, so the 30 test images are not in training. The backbone is timm's ``test_efficientnet`` with random weights,
whose pooled features are tiny (std ~0.003) but linearly separate the colours: the exact head fit (standardised
features) separates them, and fine-tuning with SGD at LR 1e-2 learns them in 3 epochs (checked with seeds 0-2: 1.0
each). A broken loss, optimizer, head, label mapping or preprocessing puts a run near chance.
"""

from __future__ import annotations

import pytest

import transferkit
from conftest import make_class_folders

FLOOR = 0.9  # of 30 held-out test images: at most 3 wrong (chance: 1/3)


@pytest.fixture(scope="module")
def held_out_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning") / "tree"
    make_class_folders(root / "train", per_class=10)
    make_class_folders(root / "val", per_class=4, start=1000)
    make_class_folders(root / "test", per_class=10, start=2000)
    return root


def options(tiny_weights, **extra):
    return {"model": "timm:test_efficientnet", "weights": str(tiny_weights), "image_size": 32, "batch_size": 8,
            "workers": 0, "patience": 0, "progress": False, **extra}


@pytest.mark.parametrize("strategy, extra", [
    ("linear-probe", {"epochs": 1}),  # the exact head fit on cached features
    ("fine-tune", {"epochs": 3, "lr": 1e-2, "augment": "none"}),  # SGD through every layer
])
def test_vision_training_learns_the_held_out_test_split(held_out_tree, tiny_weights, tmp_path, strategy, extra):
    result = transferkit.train(held_out_tree, strategy=strategy, out=str(tmp_path / "run"),
                               **options(tiny_weights, **extra))
    assert result.test is not None and result.test["n"] == 30 and result.test["accuracy"] >= FLOOR
    metrics = transferkit.load(tmp_path / "run").evaluate(held_out_tree / "test")
    assert metrics["n"] == 30 and metrics["accuracy"] == pytest.approx(result.test["accuracy"])
    assert min(row["recall"] for row in metrics["per_class"].values()) >= 0.7  # every class, not a majority vote
