"""Fixed-seed fingerprints of the final weights of every strategy, on tiny offline data.

Run before and after a refactoring that must not change results: the same code path with the same seed must
give bit-identical weights. Prints one line per case and writes JSON (``--out``); ``--against FILE`` compares
with an earlier JSON and exits 1 on any difference.

    python benchmarks/weights_fingerprint.py --out /tmp/before.json
    ... change the code ...
    python benchmarks/weights_fingerprint.py --against /tmp/before.json

``benchmarks/results/weights_fingerprint.json`` holds the fingerprints of the current main (the file ending in
``_before.json`` those before the one-schema restructuring, which left them unchanged).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
POSITIVE = ["good", "great", "wonderful", "moving", "superb", "lovely"]
NEGATIVE = ["bad", "awful", "boring", "poor", "dreadful", "dull"]
FILLER = ["the", "film", "was", "a", "story", "and", "acting", "really", "quite"]


def make_images(root: Path) -> Path:
    for split, count, start in (("train", 10, 0), ("val", 4, 1000), ("test", 4, 2000)):
        for c, (name, colour) in enumerate(COLOURS.items()):
            for i in range(count):
                rng = np.random.default_rng(start + 100 * c + i)
                size = (24 + 4 * (i % 3), 24)  # some non-square images
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (*size, 3)), 0, 255).astype(np.uint8)
                path = root / split / name / f"{name}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


def make_weights(folder: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = folder / "test_efficientnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def make_texts(folder: Path) -> tuple[Path, Path]:
    from transformers import BertConfig, BertModel, BertTokenizer

    def sentence(words, i):
        return " ".join([FILLER[i % 9], FILLER[(i + 3) % 9], words[i % 6], words[(i + 2) % 6], FILLER[(i + 5) % 9]])

    bert = folder / "tiny-bert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, "new", "text"]
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(str(bert))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(bert))
    rows = ["text,label"] + [f"{sentence(POSITIVE, i)},pos" for i in range(16)] + \
           [f"{sentence(NEGATIVE, i)},neg" for i in range(16)]
    csv = folder / "reviews.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return bert, csv


def fingerprint(run: Path) -> str:
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name in ("model.safetensors", "head.safetensors"):
        if (run / name).is_file():
            state = load_file(str(run / name))
            for key in sorted(state):
                digest.update(key.encode())
                digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cases(images: Path, weights: Path, bert: Path, csv: Path) -> dict[str, tuple[Path, dict]]:
    image = {"model": "timm:test_efficientnet", "weights": str(weights), "image_size": 32, "batch_size": 8,
             "epochs": 2, "head_epochs": 1, "workers": 0, "augment": "none", "patience": 0}
    text = {"model": str(bert), "batch_size": 8, "epochs": 2, "head_epochs": 1, "patience": 0}
    return {
        "image linear-probe": (images, {**image, "strategy": "linear-probe"}),
        "image fine-tune": (images, {**image, "strategy": "fine-tune"}),
        "image two-stage": (images, {**image, "strategy": "two-stage"}),
        "image two-stage light augmentation": (images, {**image, "strategy": "two-stage", "augment": "light"}),
        "image two-stage no caches": (images, {**image, "strategy": "two-stage", "feature_cache": "off",
                                               "decoded_cache": "off", "augment": "light"}),
        "image two-stage sgd head, 2 views": (images, {**image, "strategy": "two-stage", "head_fit": "sgd",
                                                       "cache_views": 2, "augment": "light"}),
        "image progressive lr-decay": (images, {**image, "strategy": "progressive", "groups": 4,
                                                "lr_decay": 0.5}),
        "image scratch": (images, {**image, "strategy": "scratch"}),
        "image fine-tune l2-sp hidden": (images, {**image, "strategy": "fine-tune", "l2_sp": 0.01, "hidden": 16}),
        "text fine-tune": (csv, {**text, "strategy": "fine-tune", "lr": 3e-3}),
        "text two-stage": (csv, {**text, "strategy": "two-stage"}),
        "text lora": (csv, {**text, "strategy": "lora", "lr": 5e-3}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints as JSON")
    parser.add_argument("--against", type=Path, help="compare with an earlier JSON; exit 1 on a difference")
    args = parser.parse_args()
    torch.set_num_threads(2)
    import logging

    import transferkit

    logging.getLogger("transferkit").addHandler(logging.NullHandler())
    logging.getLogger("transferkit").setLevel(logging.WARNING)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, weights = make_images(tmp / "images"), make_weights(tmp)
        bert, csv = make_texts(tmp)
        for i, (name, (data, options)) in enumerate(cases(images, weights, bert, csv).items()):
            run = tmp / f"run{i}"
            result = transferkit.train(str(data), out=str(run), progress=False, **options)
            results[name] = {"weights": fingerprint(run), "val_accuracy": [round(h["val_accuracy"], 6)
                                                                          for h in result.history]}
            print(f"{name:<40} {results[name]['weights']}  val {results[name]['val_accuracy']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.against:
        before = json.loads(args.against.read_text())
        differ = [n for n in results if before.get(n, {}).get("weights") != results[n]["weights"]]
        print(f"{len(results) - len(differ)} of {len(results)} identical to {args.against}"
              + (f"; different: {', '.join(differ)}" if differ else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
