"""channels_last (NHWC) against PyTorch's default NCHW layout, on this machine, in one run.

    python benchmarks/channels_last.py                      # EfficientNet-Lite0, ResNet-18/50, ConvNeXt-Atto @ 224 px
    python benchmarks/channels_last.py --image-size 128 --models timm:resnet18

``--channels-last auto`` puts convolutional networks in channels_last on the CPU as on a GPU. This measures why:
for each model, the same module (random weights: the layout, not the values, sets the speed) and the same batch,
first in NCHW then in channels_last — inference images/s (the feature and prefix caches, evaluation, predict) and
training-step images/s (forward, cross-entropy, backward, AdamW) — and prints the ratios. Timed after a warm-up step;
each figure is the best of ``--repeats`` timings, so a busy moment of a shared machine counts less.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import parser, report  # noqa: E402

from transferkit.models import load_model  # noqa: E402

SMOKE = {"models": ["timm:test_resnet"], "image_size": 32, "batch_size": 4, "repeats": 1}


def rates(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` inference and training-step images/s of ``model`` on one batch."""
    model.eval()
    with torch.inference_mode():
        model(images)
        inference = max(_rate(lambda: model(images), len(images)) for _ in range(repeats))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    step()
    training = max(_rate(step, len(images)) for _ in range(repeats))
    return inference, training


def _rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--models", nargs="+",
                   default=["efficientnet_lite0", "timm:resnet18", "timm:resnet50", "timm:convnext_atto"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        model = load_model(name, 10, pretrained=False)
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        labels = torch.randint(0, 10, (args.batch_size,))
        nchw = rates(model, images, labels, args.repeats)
        model.to(memory_format=torch.channels_last)
        nhwc = rates(model, images.contiguous(memory_format=torch.channels_last), labels, args.repeats)
        rows.append({"model": name, "image_size": args.image_size, "batch": args.batch_size,
                     "nchw_infer_img_s": nchw[0], "cl_infer_img_s": nhwc[0], "infer_speedup": nhwc[0] / nchw[0],
                     "nchw_train_img_s": nchw[1], "cl_train_img_s": nhwc[1], "train_speedup": nhwc[1] / nchw[1]})
    report("channels_last", rows, ["model", "image_size", "batch", "nchw_infer_img_s", "cl_infer_img_s",
                                   "infer_speedup", "nchw_train_img_s", "cl_train_img_s", "train_speedup"], args.out,
           notes=f"{torch.get_num_threads()} threads; speedup = channels_last / NCHW images/s, best of "
                 f"{args.repeats}")
    return rows


if __name__ == "__main__":
    main()
