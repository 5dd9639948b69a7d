"""Shared fixtures: tiny image folders and tiny timm weights, all made on the fly (offline, seconds)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(2)

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def make_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 24, mode: str = "RGB") -> None:
    """A noisy image dominated by ``colour`` (easy to classify, different every seed)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_class_folders(root: Path, per_class: int = 8, classes: dict | None = None, start: int = 0) -> Path:
    for c, (name, colour) in enumerate((classes or COLOURS).items()):
        for i in range(per_class):
            make_image(root / name / f"{name}_{i}.png", colour, seed=start + 100 * c + i)
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """photos/<class>/*.png: 3 classes x 8 images."""
    return make_class_folders(tmp_path / "photos")


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """photos/{train,val,test}/<class>/*.png."""
    root = tmp_path / "tree"
    make_class_folders(root / "train", per_class=8)
    make_class_folders(root / "val", per_class=3, start=1000)
    make_class_folders(root / "test", per_class=3, start=2000)
    return root


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm ``test_efficientnet`` state dict (1000-class head included), as a safetensors file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def tiny_options(tiny_weights: Path) -> dict:
    """Training options for a tiny, fast run (timm test model, 32 px, 1 worker-free loader)."""
    return {"model": "timm:test_efficientnet", "weights": str(tiny_weights), "image_size": 32, "batch_size": 8,
            "epochs": 2, "head_epochs": 1, "workers": 0, "augment": "none"}
