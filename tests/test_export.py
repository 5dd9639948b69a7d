"""Export: ONNX (onnxruntime), pt2 (torch.export) and hf (transformers) reproduce ``transferkit.load(run).predict``."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

import transferkit
from conftest import make_class_folders
from transferkit.errors import TransferKitError
from transferkit.export import export, read_sidecar

TEXTS = ["a wonderful moving film", "the acting was dull and awful", "quite a superb story", "poor"]


def sidecar_transform(sidecar: dict, uint8: bool) -> T.Compose:
    """The preprocessing a user builds from the sidecar alone."""
    p = sidecar["preprocessing"]
    steps = [T.Resize(p["resize_size"], interpolation=InterpolationMode(p["interpolation"]), antialias=True),
             T.CenterCrop(p["input_size"]), T.ToImage()]
    if not uint8:
        steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(p["mean"], p["std"])]
    return T.Compose(steps)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def onnx_probabilities(path, images: list[Image.Image]) -> np.ndarray:
    sidecar = read_sidecar(path)
    uint8 = sidecar["preprocessing"]["in_graph"]
    batch = np.stack([sidecar_transform(sidecar, uint8)(im).numpy() for im in images])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i["name"] for i in sidecar["inputs"]]
    return softmax(session.run(["logits"], {"images": batch})[0])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = make_class_folders(tmp_path_factory.mktemp("photos"), per_class=2)
    return [Image.open(p).convert("RGB") for p in sorted(folder.rglob("*.png"))]


@pytest.mark.parametrize("include_preprocessing", [False, True])
def test_onnx_vision_matches_predict(vision_run, photos, tmp_path, include_preprocessing):
    result = export(vision_run, "onnx", tmp_path / "pets.onnx", include_preprocessing=include_preprocessing)
    sidecar = json.loads(result.sidecar.read_text())
    assert result.sidecar.name == "pets.onnx.json" and sidecar["classes"] == ["blue", "green", "red"]
    assert sidecar["opset"] == 18 and sidecar["verification"]["passed"] is True
    assert sidecar["verification"]["max_abs_diff_probabilities"] <= sidecar["verification"]["tolerance"] == 1e-4
    assert sidecar["inputs"] == [{"name": "images", "dtype": "uint8" if include_preprocessing else "float32",
                                  "shape": ["batch", 3, 32, 32]}]
    expected = transferkit.load(vision_run).predict_proba(photos)
    got = onnx_probabilities(result.path, photos)  # batch of 6: the batch axis is dynamic (traced at 2)
    assert got.shape == expected.shape == (6, 3)
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets.onnx", "pets.onnx.json"]  # no staging left


def test_pt2_round_trips(vision_run, tmp_path):
    result = export(vision_run, "pt2", tmp_path / "pets.pt2")
    program = torch.export.load(str(result.path))
    model = transferkit.load(vision_run).model
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(program.module()(images=x), model(x), atol=1e-5)
    assert read_sidecar(result.path)["format"] == "pt2"


def test_failed_verification_writes_nothing(vision_run, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TransferKitError, match=r"differ by up to \d\.\d+e-\d+ \(tolerance 1e-12"):
        export(vision_run, "onnx", out / "pets.onnx", tolerance=1e-12)  # float32 runtimes differ by ~1e-7
    assert list(out.iterdir()) == []


def test_refuses_to_clobber_and_unsupported_requests(vision_run, text_runs, tmp_path):
    (tmp_path / "pets.onnx").write_bytes(b"keep me")
    with pytest.raises(TransferKitError, match="already exists.*--overwrite"):
        export(vision_run, "onnx", tmp_path / "pets.onnx")
    assert (tmp_path / "pets.onnx").read_bytes() == b"keep me"
    with pytest.raises(TransferKitError, match="'format' parameter must be one of onnx, pt2, hf"):
        export(vision_run, "tflite", tmp_path / "x")
    with pytest.raises(TransferKitError, match="--format hf is for language models"):
        export(vision_run, "hf", tmp_path / "hf")
    with pytest.raises(TransferKitError, match="needs a run with cls pooling; this one uses mean pooling"):
        export(text_runs["mean"], "hf", tmp_path / "hf")
    with pytest.raises(TransferKitError, match="include-preprocessing is for image models"):
        export(text_runs["cls"], "onnx", tmp_path / "t.onnx", include_preprocessing=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets.onnx"]


def test_onnx_text_matches_predict(text_runs, tmp_path):
    from transformers import AutoTokenizer

    run = text_runs["mean"]  # mean pooling lives inside the graph
    result = export(run, "onnx", tmp_path / "reviews.onnx")
    sidecar = read_sidecar(result.path)
    assert [i["name"] for i in sidecar["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert sidecar["inputs"][0]["shape"] == ["batch", "sequence"]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / sidecar["preprocessing"]["tokenizer_folder"]))
    encoded = tokenizer(TEXTS, padding=True, truncation=True, max_length=sidecar["preprocessing"]["max_length"],
                        return_tensors="np")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    got = softmax(session.run(["logits"], {k: v.astype(np.int64) for k, v in encoded.items()})[0])
    trained = transferkit.load(run)
    expected = trained.predict_proba(TEXTS)
    assert np.abs(got - expected).max() < 1e-4
    assert [sidecar["classes"][i] for i in got.argmax(1)] == [p.label for p in trained.predict(TEXTS)] == \
        ["pos", "neg", "pos", "neg"]


def test_hf_folder_loads_with_transformers_and_predicts_the_same(text_runs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = text_runs["cls"]
    result = export(run, "hf", tmp_path / "reviews-hf")
    assert result.sidecar == tmp_path / "reviews-hf" / "transferkit-export.json"
    assert (tmp_path / "reviews-hf" / "model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(str(result.path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(result.path))
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.label2id == {"neg": 0, "pos": 1}
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    got = torch.softmax(logits, dim=1).numpy()
    trained = transferkit.load(run)
    assert np.abs(got - trained.predict_proba(TEXTS)).max() < 1e-4
    assert [model.config.id2label[i] for i in got.argmax(1)] == [p.label for p in trained.predict(TEXTS)] == \
        ["pos", "neg", "pos", "neg"]


def test_text_pt2_round_trips(text_runs, tmp_path):
    trained = transferkit.load(text_runs["cls"])
    result = export(trained, "pt2", tmp_path / "reviews.pt2")
    encoded = trained.model.encode(TEXTS)
    with torch.no_grad():
        got = torch.export.load(str(result.path)).module()(**encoded)
        assert torch.allclose(got, trained.model(encoded), atol=1e-5)


def test_cli_export(capsys, vision_run, tmp_path):
    from test_cli import run_cli

    code, out, err = run_cli(capsys, "export", vision_run, "--format", "onnx", "--out", tmp_path / "pets.onnx")
    assert code == 0, err
    assert "verified: max probability difference" in out and (tmp_path / "pets.onnx.json").is_file()
    code, _, err = run_cli(capsys, "export", vision_run, "--format", "onnx", "--out", tmp_path / "pets.onnx")
    assert code == 2 and err.startswith("error:") and "--overwrite" in err and "Traceback" not in err


@pytest.mark.slow
def test_builtin_efficientnet_lite0_exports_to_onnx(tmp_path):
    """The real EfficientNet-Lite0 (SAME padding) at its 224 px input size, on real photographs."""
    from skimage import data as skdata

    photos = {"cat": skdata.chelsea(), "coffee": skdata.coffee(), "astronaut": skdata.astronaut()}
    for name, pixels in photos.items():
        for i in range(3):  # a few crops per photo, so each class has train and val images
            crop = Image.fromarray(pixels).crop((20 * i, 10 * i, 300 + 20 * i, 300 + 10 * i))
            folder = tmp_path / "data" / ("val" if i == 2 else "train") / name
            folder.mkdir(parents=True, exist_ok=True)
            crop.save(folder / f"{i}.png")
    transferkit.train(str(tmp_path / "data"), model="efficientnet_lite0", strategy="linear-probe", workers=0,
                      progress=False, out=str(tmp_path / "run"))
    result = export(tmp_path / "run", "onnx", tmp_path / "lite0.onnx", include_preprocessing=True)
    sidecar = read_sidecar(result.path)
    assert sidecar["inputs"][0]["shape"] == ["batch", 3, 224, 224] and "fixed at 224 x 224" in sidecar["notes"][0]
    images = [Image.fromarray(p) for p in photos.values()]
    expected = transferkit.load(tmp_path / "run").predict_proba(images)
    got = onnx_probabilities(result.path, images)
    assert np.abs(got - expected).max() < 1e-4 and (got.argmax(1) == expected.argmax(1)).all()
