"""Model sources: built-in real weights, preprocessing from the weights, head replacement, groups, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.errors import TransferKitError
from transferkit.models import load_model, parse_source, read_weights_file


def test_builtin_preprocessing_and_head_replacement():
    model = load_model("efficientnet_lite0", num_classes=7, dropout=0.3, hidden=64)
    p = model.preprocessing
    assert (p.mean, p.std, p.input_size, p.interpolation) == ((0.5,) * 3, (0.5,) * 3, 224, "bicubic")
    assert p.resize_size == 256
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1280, 64), (64, 7)]
    assert sum(isinstance(m, nn.Dropout) for m in model.head) == 2
    assert "replaced classifier (1000 ImageNet classes)" in model.describe_head()


def test_timm_preprocessing_comes_from_pretrained_cfg():
    model = load_model("timm:test_resnet", 3, pretrained=False)
    p = model.preprocessing
    assert p.input_size == 160 and p.crop_pct == pytest.approx(0.95) and p.interpolation == "bilinear"
    assert "timm pretrained_cfg" in p.source
    assert model.preprocessing.with_image_size(64).input_size == 64


def test_torchvision_preprocessing_from_weights_enum_and_head():
    model = load_model("torchvision:resnet18", 4, pretrained=False)
    p = model.preprocessing
    assert p.mean == pytest.approx((0.485, 0.456, 0.406)) and p.std == pytest.approx((0.229, 0.224, 0.225))
    assert (p.input_size, p.resize_size) == (224, 256)
    assert "fc (Linear 512→1000)" in model.spec.replaced
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("spec, first, count", [
    ("efficientnet_lite0", "stem", 9),
    ("timm:test_vit", "stem", 8),
    ("torchvision:resnet18", "conv1", 7),
])
def test_layer_groups_run_from_input_to_head(spec, first, count):
    model = load_model(spec, 3, pretrained=False)
    groups = model.layer_groups()
    assert groups[0].name == first and groups[-1].name == "head" and len(groups) == count
    names = [n for g in groups for n in g.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # every parameter exactly once


def test_weights_file_loads_backbone_and_drops_classifier(tiny_weights, tmp_path):
    state = read_weights_file(tiny_weights)
    model = load_model("timm:test_efficientnet", 3, weights=tiny_weights)
    assert torch.equal(model.backbone.conv_stem.weight, state["conv_stem.weight"])
    assert model.spec.weights == str(tiny_weights)
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": state}, pth)
    model2 = load_model("timm:test_efficientnet", 3, weights=pth)
    assert torch.equal(model2.backbone.conv_stem.weight, state["conv_stem.weight"])


def test_weights_file_never_unpickles_objects(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"weights": np.random.default_rng(0)}, handle, protocol=2)  # an arbitrary object, not tensors
    with pytest.raises(TransferKitError, match="never unpickles"):
        load_model("timm:test_efficientnet", 3, weights=path)


def test_weights_of_another_architecture_are_refused(tiny_weights):
    with pytest.raises(TransferKitError, match="does not fit this architecture"):
        load_model("timm:test_resnet", 3, weights=tiny_weights)


@pytest.mark.parametrize("spec, message", [
    ("timm:resnt18", "Did you mean: resnet18"),
    ("resnet18", "timm:resnet18 or torchvision:resnet18"),
    ("tf_efficientnet_lite0", "timm:tf_efficientnet_lite0\\. Did you mean"),
    ("efficientnet_lite1", r"timm:efficientnet_lite1\. Did you mean: .*efficientnet_lite0"),
    ("torchvision:resnet19", "Did you mean"),
    ("hf:bert-base-uncased", "language model"),
    ("keras:resnet", "scheme"),
])
def test_unknown_models_get_helpful_errors(spec, message):
    with pytest.raises(TransferKitError, match=message):
        parse_source(spec)


def test_offline_pretrained_download_names_the_fix():
    with pytest.raises(TransferKitError, match="--weights FILE.*efficientnet_lite0"):
        load_model("timm:test_resnet.r160_in1k", 3)


def _hub_error(cls_name, message, status=404):
    import httpx2
    import huggingface_hub.errors as hub_errors

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/timm/x"))
    return getattr(hub_errors, cls_name)(message, response=response)


def _offline_error():
    import huggingface_hub.errors as hub_errors

    try:
        try:
            raise hub_errors.OfflineModeIsEnabled("Cannot reach https://huggingface.co/timm/x: offline mode is on.")
        except hub_errors.OfflineModeIsEnabled as cause:
            raise hub_errors.LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub "
                                                     "and we cannot find the requested files in the local cache.") \
                from cause
    except hub_errors.LocalEntryNotFoundError as exc:
        return exc


@pytest.mark.parametrize("make_error, expected, absent", [
    (_offline_error, r"offline \(OfflineModeIsEnabled: Cannot reach https://huggingface.co/timm/x: offline mode",
     "not found ("),
    (lambda: _hub_error("RepositoryNotFoundError", "404 Client Error. Repository Not Found for url: x.\nmore"),
     r"not found \(RepositoryNotFoundError: 404 Client Error\. Repository Not Found for url: x\.\)", "offline ("),
    (lambda: RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory\nmore"),
     r"failed \(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory\)",
     "offline ("),
])
def test_timm_weight_errors_report_their_real_cause(monkeypatch, make_error, expected, absent):
    import timm

    def fail(*args, **kwargs):
        raise make_error()

    monkeypatch.setattr(timm, "create_model", fail)
    with pytest.raises(TransferKitError, match=expected) as info:
        load_model("timm:test_resnet.r160_in1k", 3)
    message = str(info.value)
    assert absent not in message and "\n" not in message and "Fix:" in message


@pytest.mark.parametrize("error, expected", [
    (lambda: __import__("urllib.error").error.URLError(OSError(-2, "Name or service not known")),
     r"offline \(OSError: \[Errno -2\] Name or service not known\)"),
    (lambda: __import__("urllib.error").error.HTTPError("https://download.pytorch.org/x.pth", 404, "Not Found", {},
                                                         None), r"not found \(HTTPError: HTTP Error 404: Not Found\)"),
    (lambda: RuntimeError("invalid hash value (expected \"f37072fd\", got \"00000000\")"),
     r"failed \(RuntimeError: invalid hash value"),
])
def test_torchvision_weight_errors_report_their_real_cause(monkeypatch, error, expected):
    import torchvision

    def fail(*args, **kwargs):
        raise error()

    monkeypatch.setattr(torchvision.models, "get_model", fail)
    with pytest.raises(TransferKitError, match=expected):
        load_model("torchvision:resnet18", 3)


def test_channels_last_auto_picks_batchnorm_convnets_on_the_cpu_and_every_convnet_on_a_gpu():
    """--channels-last auto: NHWC pays on the CPU for conv+BatchNorm networks (benchmarks/channels_last.py), not for
    LayerNorm ones; a network without convolutions never changes layout. predict loads a run in the same layout."""
    from transferkit.models.layout import prefers_channels_last, to_layout

    bn_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ln_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(1, 4))
    mlp = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    assert [prefers_channels_last(m, on_gpu=False) for m in (bn_net, ln_net, mlp)] == [True, False, False]
    assert [prefers_channels_last(m, on_gpu=True) for m in (bn_net, ln_net, mlp)] == [True, True, False]
    assert to_layout(bn_net, "auto", on_gpu=False)[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert to_layout(ln_net, "auto", on_gpu=False)[0].weight.is_contiguous()
    assert not ln_net[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_a_run_and_its_reload_use_channels_last_for_a_batchnorm_convnet(class_folder, tiny_options, tmp_path):
    import transferkit
    from transferkit import prepare
    from transferkit.options import TrainConfig

    config = TrainConfig(data=str(class_folder), **{**tiny_options, "cpu": True})
    model = prepare.load_run_model(config, 2)  # before any feature pass: the caches run in the fast layout too
    assert model.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    off = prepare.load_run_model(TrainConfig(data=str(class_folder), **{**tiny_options, "channels_last": "off"}), 2)
    assert not off.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    transferkit.train(class_folder, out=str(tmp_path / "run"), progress=False, **{**tiny_options, "epochs": 1})
    loaded = transferkit.load(tmp_path / "run").model
    assert loaded.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
