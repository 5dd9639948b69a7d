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


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that sets torch's thread count (the serve benchmark pins 1) must not change the numerics of the tests
    after it: the detection learning floor scored mAP@0.5 0.23 on 1 thread after the serve smoke, 0.3+ on 2."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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
    """Training options for a tiny, fast run (timm test model, 32 px, 1 worker-free loader), two-stage (the default,
    auto, would choose the linear probe for such tiny data: tests/test_auto.py covers it)."""
    return {"strategy": "two-stage", "model": "timm:test_efficientnet", "weights": str(tiny_weights), "image_size": 32,
            "batch_size": 8,
            "epochs": 2, "head_epochs": 1, "workers": 0, "augment": "none"}


# --- finished tiny runs, shared by the export and serve tests (session-scoped: trained once) ---------------------

SENTIMENT = {"pos": ["good", "great", "wonderful", "moving", "superb", "lovely"],
             "neg": ["bad", "awful", "boring", "poor", "dreadful", "dull"]}
FILLER_WORDS = ["the", "film", "was", "a", "story", "and", "acting", "really", "quite"]


@pytest.fixture(scope="session")
def vision_run(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Path:
    """A finished two-stage run of timm ``test_efficientnet`` at 32 px on red/green/blue images."""
    import transferkit

    root = tmp_path_factory.mktemp("vision-run")
    make_class_folders(root / "data" / "train", per_class=8)
    make_class_folders(root / "data" / "val", per_class=3, start=1000)
    transferkit.train(str(root / "data"), model="timm:test_efficientnet", weights=str(tiny_weights), image_size=32,
                      batch_size=8, epochs=2, head_epochs=1, workers=0, augment="none", strategy="two-stage",
                      out=str(root / "run"), progress=False)
    return root / "run"


def _tiny_bert_folder(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *SENTIMENT["pos"], *SENTIMENT["neg"], *FILLER_WORDS]
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(folder))
    return folder


def _reviews(path: Path, n: int = 12) -> Path:
    rows = ["text,label"]
    for label, words in SENTIMENT.items():
        rows += [" ".join([FILLER_WORDS[i % 9], words[i % 6], words[(i + 2) % 6], FILLER_WORDS[(i + 5) % 9]]) +
                 f",{label}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def text_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Finished tiny-BERT sentiment runs (2 layers, hidden 32): ``{"cls": fine-tuned, cls pooling; "mean":
    linear probe, mean pooling}``."""
    import transferkit

    root = tmp_path_factory.mktemp("text-runs")
    bert, data = _tiny_bert_folder(root / "bert"), _reviews(root / "reviews.csv")
    runs = {}
    for pooling, options in (("cls", {"strategy": "fine-tune", "lr": 3e-3, "epochs": 10, "batch_size": 4}),
                             ("mean", {"strategy": "linear-probe"})):
        transferkit.train(str(data), model=str(bert), pooling=pooling, patience=0, progress=False,
                          out=str(root / pooling), **options)
        runs[pooling] = root / pooling
    return runs
