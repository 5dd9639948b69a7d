"""GPU throughput: the input pipelines (alone and feeding a fine-tune), then plain PyTorch vs transferkit training.

    bash benchmarks/gpu.sh            # the whole measurement in one command (a few minutes on one GPU)
    bash benchmarks/gpu.sh --smoke    # tiny CPU run of the same script (the tests run it)

This script measures one GPU. With several GPUs, ``gpu.sh`` then runs ``benchmarks/distributed.py --gpus``: one
run on 1 GPU vs the same run on all of them (torchrun, one process per GPU), samples/s and scaling efficiency.

Rows, in this order (the ones issue 16 asks for first, ``torch.compile`` last since compiling is the slowest part):

- ``input pipeline``: images/s delivered to the device as augmented, normalised 224 px batches (no model) by the
  plain ``ImageFolder`` + ``DataLoader`` pipeline (JPEG decoding and augmentation per sample in the workers) and by
  ``--device-augment on`` (decoded uint8 cache held on the device, crops, flips and normalisation there in
  batches), on the same 640x480 JPEGs in the same run;
- ``resnet50 bf16 fine-tune`` fed by each of them (``--pipeline-model``; random weights, bf16 autocast,
  channels_last, fused AdamW): whether the fine-tune is bound by its input;
- timm ResNet-50 and ViT-B/16 at 224 px and BERT-base (sequence length 128), random weights: full fine-tuning steps
  on synthetic input already on the device (fp32/tf32, bf16 + channels_last, and ``compile``), the ``frozen``
  forward (the feature-extraction cost), and transferkit's ``fit`` loop with its GPU defaults (bf16 autocast,
  channels_last for CNNs, fused AdamW).

A row that fails (a kernel or API missing from the machine's library versions) is reported with its error and the
others still run; the rows so far are written after each one.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import RESULTS, parser, report  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402


def train_step(model: nn.Module, device: torch.device, *, bf16: bool, channels_last: bool, compile_model: bool,
               train: bool = True) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One optimizer step of ``model`` on a batch (or, ``train=False``, one forward), the plain recipe: AdamW (fused
    on CUDA), cross-entropy, bf16 autocast and channels_last when asked."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    model.train(train)

    def one(x: torch.Tensor, y: torch.Tensor) -> None:
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            if not train:
                with torch.no_grad():
                    net(x)
                return
            loss = nn.functional.cross_entropy(_logits(net(x)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return one


def step_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *, bf16: bool, channels_last: bool,
              compile_model: bool, train: bool = True) -> float:
    one = train_step(model, x.device, bf16=bf16, channels_last=channels_last, compile_model=compile_model,
                     train=train)
    for _ in range(3 if not compile_model else 5):  # warm-up (and compilation)
        one(x, y)
    _sync(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        one(x, y)
    _sync(x.device)
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


def pipeline_rates(device: torch.device, images: int, batch_size: int, workers: int,
                   model_name: str | None = None) -> Iterator[tuple[str, str, Callable[[], float]]]:
    """Images/s delivered to ``device`` as normalised 224 px training batches (light augmentation) by the plain
    ``ImageFolder`` + ``DataLoader`` pipeline (JPEG decoding and augmentation in the workers) and by transferkit's
    on-device path (decoded cache held on the device, crops, flips and normalisation there), on the same JPEGs; with
    ``model_name`` (a timm model, random weights) also images/s of a bf16 fine-tune of it fed by each pipeline, which
    says whether the training is bound by its input. Yields (model, mode, measure) for :func:`main` to guard."""
    import tempfile

    import timm
    from decoded_cache import write_photos
    from torchvision.datasets import ImageFolder

    from transferkit.data import build_transforms
    from transferkit.data.samples import ImageSamples
    from transferkit.models import BUILTIN_MODELS

    prep = BUILTIN_MODELS["efficientnet_lite0"].preprocessing
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp) / "photos", images, (640, 480))
        plain = ImageFolder(str(Path(tmp) / "photos"), transform=build_transforms(prep, "light")[0])
        common = {"batch_size": batch_size, "shuffle": True, "num_workers": workers, "persistent_workers": workers > 0}
        samples = ImageSamples([Path(p) for p, _ in plain.samples], [y for _, y in plain.samples], plain.classes)
        pipelines = {  # each built once, at its first row: the fed row reuses the loader (and its workers)
            "plain ImageFolder + DataLoader (CPU decode + augment)": functools.cache(
                lambda: (DataLoader(plain, pin_memory=device.type == "cuda", **common), None)),
            "transferkit --device-augment on (decoded cache on the device)": functools.cache(
                lambda: _device_pipeline(samples, prep, Path(tmp) / "cache", common))}
        step = functools.cache(lambda: train_step(  # one model for both pipelines, made at the first fed row
            timm.create_model(model_name, pretrained=False, num_classes=len(plain.classes)), device, bf16=True,
            channels_last=True, compile_model=False))
        for mode, build in pipelines.items():
            yield "input pipeline", mode, lambda build=build: _epoch_rate(*build(), device, None)
            if model_name is not None:
                yield (f"{model_name} bf16 fine-tune", f"fed by: {mode}",
                       lambda build=build: _epoch_rate(*build(), device, step()))


def _device_pipeline(samples, prep, cache: Path, common: dict) -> tuple[DataLoader, Callable]:
    from transferkit.data.decoded import decoded_images
    from transferkit.data.device import DeviceAugment, DeviceCrops

    cached = decoded_images(samples, prep, cache, progress=False)
    return DataLoader(DeviceCrops(cached, samples.labels, prep, "light"), **common), DeviceAugment(cached, prep)


def _epoch_rate(loader: DataLoader, transform: Callable | None, device: torch.device,
                step: Callable[[torch.Tensor, torch.Tensor], None] | None) -> float:
    """Images/s of the second pass over ``loader`` (the first warms the workers, the device buffer and the kernels),
    each batch moved to ``device``, augmented there by ``transform`` when given, then trained on by ``step``."""
    for _ in range(2):
        start, seen = time.perf_counter(), 0
        for inputs, labels in loader:
            inputs = inputs.to(device, non_blocking=True)
            inputs = transform(inputs) if transform is not None else inputs
            if step is not None:
                step(inputs, labels.to(device, non_blocking=True))
            seen += len(inputs)
        _sync(device)
    return seen / (time.perf_counter() - start)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measurements(args, device: torch.device) -> Iterator[tuple[str, str, Callable[[], float]]]:
    """(model, mode, measure) for every row, the ones issue 16 asks for first (the input pipelines, alone and feeding
    a fine-tune), ``torch.compile`` last (its compilation is the slowest part); nothing runs until ``measure()``."""

    yield from pipeline_rates(device, 16 if args.smoke else args.pipeline_images, args.batch_size,
                              0 if args.smoke else args.workers, args.pipeline_model or None)
    vision = [("resnet50", "timm:resnet50", 224), ("vit_base_patch16_224", "timm:vit_base_patch16_224", 224)]
    if args.smoke:
        vision = [("test_resnet", "timm:test_resnet", 64)]
    compiled = []
    for name, spec, size in vision:
        x = torch.randn(args.batch_size, 3, size, size, device=device)
        y = torch.randint(0, 1000, (args.batch_size,), device=device)
        cnn = "vit" not in name
        modes = [("plain fp32/tf32", dict(bf16=False, channels_last=False, compile_model=False)),
                 ("plain bf16" + (" + channels_last" if cnn else ""), dict(bf16=True, channels_last=cnn,
                                                                          compile_model=False)),
                 ("plain frozen forward (bf16)", dict(bf16=True, channels_last=cnn, compile_model=False,
                                                      train=False))]
        if not args.no_compile:
            compiled.append((name, x, y, ("plain bf16 + compile", dict(bf16=True, channels_last=cnn,
                                                                       compile_model=True))))
        for mode, kwargs in modes:
            yield name, mode, _vision_rate(name, x, y, args.steps, kwargs)
        yield name, "transferkit fit (defaults)", lambda spec=spec, x=x, y=y: transferkit_rate(
            spec, x.cpu() if device.type == "cpu" else x, y, args.steps)
    yield from _bert_rates(args, device)
    for name, x, y, (mode, kwargs) in compiled:
        yield name, mode, _vision_rate(name, x, y, args.steps, kwargs)


def _vision_rate(name: str, x: torch.Tensor, y: torch.Tensor, steps: int, kwargs: dict) -> Callable[[], float]:
    import timm

    return lambda: step_rate(timm.create_model(name, pretrained=False, num_classes=1000), x, y, steps, **kwargs)


def _bert_rates(args, device: torch.device) -> Iterator[tuple[str, str, Callable[[], float | None]]]:
    try:
        from transformers import BertConfig, BertForSequenceClassification
    except ImportError:
        yield "bert-base seq128", "skipped: transformers not installed", lambda: None
        return
    config = BertConfig() if not args.smoke else BertConfig(hidden_size=32, num_hidden_layers=2,
                                                            num_attention_heads=2, intermediate_size=37)
    tokens = torch.randint(0, config.vocab_size, (64 if not args.smoke else 4, 128), device=device)
    labels = torch.randint(0, 2, (tokens.shape[0],), device=device)
    for mode, bf16 in (("plain fp32/tf32", False), ("plain bf16", True)):
        yield "bert-base seq128", mode, lambda bf16=bf16: step_rate(
            BertForSequenceClassification(config), tokens, labels, args.steps, bf16=bf16, channels_last=False,
            compile_model=False)


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--pipeline-images", type=int, default=2048, help="JPEGs (640x480) for the input-pipeline rows")
    p.add_argument("--pipeline-model", default="resnet50",
                   help="timm model (random weights) fine-tuned in bf16 on each input pipeline's batches: images/s "
                        "fed by each ('' leaves those rows out) [default: resnet50]")
    p.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)),
                   help="DataLoader workers of both input pipelines")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.no_compile = 2, 4, True
        args.pipeline_model = args.pipeline_model and "test_resnet"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    notes = f"{device}; batch {args.batch_size} (BERT: 64 x 128 tokens); {args.steps} timed steps after warm-up"
    rows: list[dict] = []
    for model, mode, measure in measurements(args, device):
        # One row's failure (a kernel or API the machine's library versions lack) costs that row, not the run: the
        # lent GPU machine's minutes are few, so every row that can be measured is, and the error is reported.
        try:
            rows.append({"model": model, "mode": mode, "per_s": measure()})
        except Exception as error:  # noqa: BLE001 - reported in the row and the log
            rows.append({"model": model, "mode": mode, "per_s": None,
                         "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"})
        print(f"{model} | {mode} | {rows[-1]['per_s'] if rows[-1]['per_s'] is None else round(rows[-1]['per_s'], 1)}"
              + (f" | {rows[-1]['error']}" if "error" in rows[-1] else ""), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _save_partial(rows, args.out, notes)
    report("gpu", rows, ["model", "mode", "per_s", "error"], args.out, notes=notes + "; " + ratios(rows))
    return rows


def _save_partial(rows: list[dict], out: Path | None, notes: str) -> None:
    """The rows so far, so a run stopped by its time limit still leaves what it measured (the final report replaces
    this file)."""
    import json

    path = out or RESULTS / "gpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "gpu", "partial": True, "notes": notes, "rows": rows}, indent=2))


def ratios(rows: list[dict]) -> str:
    """The ratios the issue asks for, from rows measured in this run: each fine-tune fed by transferkit's on-device
    pipeline against the same fine-tune fed by the plain pipeline, and each pipeline's delivery alone."""
    found = {(r["model"], r["mode"]): r["per_s"] for r in rows if r.get("per_s")}
    said = []
    for (model, mode), rate in found.items():
        if "device-augment on" in mode:
            plain = next((v for (m, md), v in found.items() if m == model and "plain ImageFolder" in md), None)
            if plain:
                said.append(f"{model}: device-augment / plain pipeline = {rate / plain:.2f}x ({rate:.0f} vs "
                            f"{plain:.0f} img/s)")
    return "; ".join(said) or "no pipeline ratio measured"


if __name__ == "__main__":
    main()
