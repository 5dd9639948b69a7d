"""GPU throughput: transferkit vs a plain PyTorch loop, fp32 vs bf16 + channels_last vs torch.compile.

    bash benchmarks/gpu.sh            # the whole measurement in one command (a few minutes on one GPU)
    python benchmarks/gpu_bench.py --smoke   # tiny CPU run that checks the script works

This script measures one GPU. With several GPUs, ``gpu.sh`` then runs ``benchmarks/distributed.py --gpus``: one
run on 1 GPU vs the same run on all of them (torchrun, one process per GPU), samples/s and scaling efficiency.

Models use random weights (no hub): timm ResNet-50 and ViT-B/16 at 224 px, and BERT-base (sequence
length 128) when ``transformers`` is installed. Each row is images (or sequences) per second of full
fine-tuning steps on synthetic input already on the device, except the ``frozen`` rows (forward only,
the feature-extraction cost) and the transferkit rows (its ``fit`` loop with its GPU defaults: bf16
autocast, channels_last for CNNs, fused AdamW). The ``input pipeline`` rows are images/s delivered to the device as
augmented, normalised 224 px batches (no model): the plain ``ImageFolder`` + ``DataLoader`` pipeline (JPEG decoding
and augmentation per sample in the workers) against ``--device-augment on`` (decoded uint8 cache held on the device,
crops, flips and normalisation there in batches), on the same 640x480 JPEGs in the same run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import parser, report  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402


def step_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *, bf16: bool, channels_last: bool,
              compile_model: bool, train: bool = True) -> float:
    device = x.device
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def one() -> None:
        with autocast:
            if not train:
                with torch.no_grad():
                    net(x)
                return
            loss = nn.functional.cross_entropy(_logits(net(x)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train(train)
    for _ in range(3 if not compile_model else 5):  # warm-up (and compilation)
        one()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    _sync(device)
    return steps * x.shape[0] / (time.perf_counter() - start)


def transferkit_rate(spec: str, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    from transferkit.models import load_model
    from transferkit.strategies import build_phases
    from transferkit.training.loop import FitConfig, fit

    model = load_model(spec, int(y.max()) + 1, pretrained=False)
    cpu_x, cpu_y = x.cpu(), y.cpu()
    data = TensorDataset(cpu_x.repeat(steps, 1, 1, 1), cpu_y.repeat(steps))
    loader = DataLoader(data, batch_size=x.shape[0], pin_memory=x.device.type == "cuda")
    val = DataLoader(TensorDataset(cpu_x, cpu_y), batch_size=x.shape[0])
    cuda = x.device.type == "cuda"
    config = FitConfig(progress=False, patience=None, bn="train", mixed_precision="bf16" if cuda else "no",
                       channels_last=cuda and "vit" not in spec, cpu=not cuda)
    phases = build_phases("fine-tune", model.layer_groups(), epochs=2)
    history = fit(model, loader, val, phases, config).history
    return history[-1]["train_samples_per_s"]  # the second epoch: warm


def pipeline_rates(device: torch.device, images: int, batch_size: int, workers: int) -> list[dict]:
    """Images/s delivered to ``device`` as normalised 224 px training batches (light augmentation) by the plain
    ``ImageFolder`` + ``DataLoader`` pipeline (JPEG decoding and augmentation in the workers) and by transferkit's
    on-device path (decoded cache held on the device, crops, flips and normalisation there), on the same JPEGs."""
    import tempfile

    from decoded_cache import write_photos
    from torchvision.datasets import ImageFolder

    from transferkit.data import build_transforms
    from transferkit.data.decoded import decoded_images
    from transferkit.data.device import DeviceAugment, DeviceCrops
    from transferkit.data.samples import ImageSamples
    from transferkit.models import BUILTIN_MODELS

    prep = BUILTIN_MODELS["efficientnet_lite0"].preprocessing
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp) / "photos", images, (640, 480))
        plain = ImageFolder(str(Path(tmp) / "photos"), transform=build_transforms(prep, "light")[0])
        common = {"batch_size": batch_size, "shuffle": True, "num_workers": workers, "persistent_workers": workers > 0}
        loaders = {"plain ImageFolder + DataLoader (CPU decode + augment)": (DataLoader(
            plain, pin_memory=device.type == "cuda", **common), None)}
        samples = ImageSamples([Path(p) for p, _ in plain.samples], [y for _, y in plain.samples], plain.classes)
        cached = decoded_images(samples, prep, Path(tmp) / "cache", progress=False)
        loaders["transferkit --device-augment on (decoded cache on the device)"] = (DataLoader(
            DeviceCrops(cached, samples.labels, prep, "light"), **common), DeviceAugment(cached, prep))
        for mode, (loader, transform) in loaders.items():
            for _ in range(2):  # the second epoch is timed: the device buffer in place
                start, seen = time.perf_counter(), 0
                for inputs, _ in loader:
                    inputs = inputs.to(device, non_blocking=True)
                    inputs = transform(inputs) if transform is not None else inputs
                    seen += len(inputs)
                _sync(device)
            rows.append({"model": "input pipeline", "mode": mode, "per_s": seen / (time.perf_counter() - start)})
    return rows


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--pipeline-images", type=int, default=2048, help="JPEGs (640x480) for the input-pipeline rows")
    p.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)),
                   help="DataLoader workers of both input pipelines")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    import timm

    vision = [("resnet50", "timm:resnet50", 224), ("vit_base_patch16_224", "timm:vit_base_patch16_224", 224)]
    if args.smoke:
        vision, args.steps, args.batch_size, args.no_compile = [("test_resnet", "timm:test_resnet", 64)], 2, 4, True
    rows = []
    for name, spec, size in vision:
        x = torch.randn(args.batch_size, 3, size, size, device=device)
        y = torch.randint(0, 1000, (args.batch_size,), device=device)
        cnn = "vit" not in name
        modes = [("plain fp32/tf32", dict(bf16=False, channels_last=False, compile_model=False)),
                 ("plain bf16" + (" + channels_last" if cnn else ""), dict(bf16=True, channels_last=cnn,
                                                                          compile_model=False))]
        if not args.no_compile:
            modes.append(("plain bf16 + compile", dict(bf16=True, channels_last=cnn, compile_model=True)))
        modes.append(("plain frozen forward (bf16)", dict(bf16=True, channels_last=cnn, compile_model=False,
                                                          train=False)))
        for mode, kwargs in modes:
            model = timm.create_model(spec.split(":")[1], pretrained=False, num_classes=1000)
            rows.append({"model": name, "mode": mode, "per_s": step_rate(model, x, y, args.steps, **kwargs)})
        rows.append({"model": name, "mode": "transferkit fit (defaults)",
                     "per_s": transferkit_rate(spec, x.cpu() if device.type == "cpu" else x, y, args.steps)})
    rows += pipeline_rates(device, 16 if args.smoke else args.pipeline_images, 4 if args.smoke else args.batch_size,
                           0 if args.smoke else args.workers)
    try:
        from transformers import BertConfig, BertForSequenceClassification
    except ImportError:
        rows.append({"model": "bert-base", "mode": "skipped: transformers not installed", "per_s": None})
    else:
        config = BertConfig() if not args.smoke else BertConfig(hidden_size=32, num_hidden_layers=2,
                                                                num_attention_heads=2, intermediate_size=37)
        tokens = torch.randint(0, config.vocab_size, (64 if not args.smoke else 4, 128), device=device)
        labels = torch.randint(0, 2, (tokens.shape[0],), device=device)
        for mode, bf16 in (("plain fp32/tf32", False), ("plain bf16", True)):
            model = BertForSequenceClassification(config)
            rows.append({"model": "bert-base seq128", "mode": mode,
                         "per_s": step_rate(model, tokens, labels, args.steps, bf16=bf16, channels_last=False,
                                            compile_model=False)})
    report("gpu", rows, ["model", "mode", "per_s"], args.out,
           notes=f"{device}; batch {args.batch_size} (BERT: 64 x 128 tokens); {args.steps} timed steps after warm-up")
    return rows


if __name__ == "__main__":
    main()
