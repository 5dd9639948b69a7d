"""Segmentation: task inference, the encoder's pyramid and the decoder's layer group under every strategy, joint
augmentation, metrics against hand-computed IoU, train -> evaluate -> predict -> load, bad input, resume, built-in
data, compare and advise — on tiny scenes (coloured rectangles on noise, 32 px) and tiny timm models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferkit
from test_cli import run_cli, tiny_flags
from test_training import InterruptAt
from transferkit.data.masks import load_mask_training_data, mask_transforms, read_mask
from transferkit.errors import TransferKitError
from transferkit.models.preprocessing import Preprocessing
from transferkit.options import TrainConfig
from transferkit.plan import make_plan
from transferkit.strategies import apply_phase, resolve_bn_policy, set_train_mode
from transferkit.tasks import get_task, infer_task
from transferkit.tasks.segmentation import build_segmentation_model, confusion, scores

COLOURS = {1: (220, 40, 40), 2: (40, 60, 220)}
CLASSES = ["background", "red", "blue"]


def make_scenes(root: Path, splits: dict[str, int] | None = None, size: int = 32, seed: int = 0,
                layout: str = "images/split") -> Path:
    """Noisy grey scenes with a red (class 1) and a blue (class 2) rectangle, masks alongside, classes.json."""
    rng = np.random.default_rng(seed)
    for split, count in (splits or {"train": 24, "val": 6, "test": 6}).items():
        for i in range(count):
            image = np.clip(rng.normal(128, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            for value, colour in COLOURS.items():
                h, w = rng.integers(size // 4, size // 2, 2)
                y, x = rng.integers(0, size - h), rng.integers(0, size - w)
                image[y:y + h, x:x + w] = colour
                mask[y:y + h, x:x + w] = value
            for kind, array in (("images", image), ("masks", mask)):
                folder = root / kind / split if layout == "images/split" else root / split / kind
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / f"{i:03d}.png")
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return root


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    return make_scenes(tmp_path / "scenes")


@pytest.fixture
def few_scenes(tmp_path: Path) -> Path:
    return make_scenes(tmp_path / "few", {"train": 12, "val": 2, "test": 2})


def tiny(weights: Path, **changes) -> dict:
    return {"model": "timm:test_efficientnet", "weights": str(weights), "image_size": 32, "batch_size": 4,
            "epochs": 2, "head_epochs": 1, "workers": 0, "augment": "none", "decoder_channels": 32, **changes}


# --- the task concept -------------------------------------------------------------------------------------


def test_task_is_inferred_from_masks_and_the_plan_says_which(scenes, class_folder, tmp_path):
    assert infer_task(scenes) == ("segmentation", f"masks in {scenes / 'masks'}")
    assert infer_task("builtin:fashion-scenes")[0] == "segmentation"
    assert infer_task(class_folder)[0] == "classification" and infer_task("builtin:digits")[0] == "classification"
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,mask\n")
    assert infer_task(manifest)[0] == "segmentation"
    plan = transferkit.plan(scenes, model="timm:test_efficientnet", image_size=32, strategy="linear-probe")
    text = str(plan)
    assert text.startswith(f"Task: segmentation (masks in {scenes / 'masks'})")
    assert "weighted by inverse pixel frequency (--class-weights auto)" in text
    assert "U-Net decoder" in text and "→3 classes" in text and "cached" not in text.split("Phases")[1].split("\n")[1]
    assert plan.to_dict()["task"] == "segmentation" and plan.phases[0].runs_on == "images"
    classification = transferkit.plan(class_folder, model="timm:test_efficientnet", image_size=32)
    assert str(classification).startswith("Task: classification (--data has no masks)")
    explicit = transferkit.plan(scenes, task="segmentation", model="timm:test_efficientnet", image_size=32)
    assert explicit.task == "segmentation"
    with pytest.raises(TransferKitError,
                       match="'task' parameter must be one of classification, segmentation, detection"):
        TrainConfig.from_options({"data": str(scenes), "task": "detection2"})


def test_two_stage_decays_the_lr_from_the_decoder_unless_an_lr_is_given(scenes, tiny_weights):
    from transferkit.api import plan

    lrs = plan(str(scenes), task="segmentation", **tiny(tiny_weights, strategy="two-stage")).phases[-1].lrs
    names = list(lrs)
    assert names[-1] == "head" and lrs["head"] == pytest.approx(1e-3)
    assert all(lrs[a] == pytest.approx(lrs[b] * 0.5) for a, b in zip(names, names[1:], strict=False))
    flat = plan(str(scenes), task="segmentation", **tiny(tiny_weights, strategy="two-stage", lr=1e-4)).phases[-1]
    assert set(flat.lrs.values()) == {1e-4}


def test_decoder_is_the_head_group_under_every_strategy(tiny_weights):
    model = build_segmentation_model("timm:test_efficientnet", 3, weights=str(tiny_weights), image_size=32,
                                     channels=16)
    groups = model.layer_groups()
    assert groups[-1].name == "head" and all(n.startswith("head.") for n in groups[-1].param_names)
    assert set(groups[-1].param_names) == {f"head.{n}" for n, _ in model.head.named_parameters()}
    assert all(n.startswith("backbone.body.") for g in groups[:-1] for n in g.param_names)
    encoder = {n for g in groups[:-1] for n in g.param_names}

    def trainable(phase):
        apply_phase(model, groups, phase)
        return {n for n, p in model.named_parameters() if p.requires_grad}

    def phases(strategy, **options):
        config = TrainConfig(data="", task="segmentation", model="timm:test_efficientnet", strategy=strategy,
                             epochs=2, head_epochs=1, **options).validate()
        return make_plan(model, config).phases

    head = set(groups[-1].param_names)
    assert [trainable(p) for p in phases("linear-probe")] == [head]
    two_stage = phases("two-stage")
    assert trainable(two_stage[0]) == head and trainable(two_stage[1]) == head | encoder
    progressive = phases("progressive")
    unfrozen = [p.trainable for p in progressive]
    assert unfrozen[0] == ("head",) and unfrozen[1] == (groups[-2].name, "head")  # top stage first
    assert set(unfrozen[-1]) == {g.name for g in groups}
    assert trainable(phases("scratch")[0]) == head | encoder
    lrs = phases("fine-tune", lrs="1e-5,1e-3")[0].lrs
    assert lrs[groups[0].name] == 1e-5 and lrs["head"] == 1e-3
    decay = phases("fine-tune", lr_decay=0.5, head_lr=1e-3)[0].lrs
    assert decay[groups[-2].name] == pytest.approx(5e-4) and decay[groups[0].name] < decay[groups[-2].name]
    # --bn auto: pre-trained encoders keep their statistics; scratch trains them even with small batches (a
    # segmentation batch pools every pixel position), unlike classification under 16 examples.
    assert resolve_bn_policy("auto", "scratch", 4, dense=True) == "train"
    assert resolve_bn_policy("auto", "scratch", 4) == "freeze" and resolve_bn_policy("auto", "two-stage", 64,
                                                                                     dense=True) == "freeze"
    config = TrainConfig(data="", task="segmentation", strategy="scratch", batch_size=4).validate()
    assert make_plan(model, config).bn == "train"
    # BatchNorm "freeze" keeps the pre-trained encoder's statistics; the new decoder's BatchNorm layers learn.
    apply_phase(model, groups, two_stage[1])
    set_train_mode(model, "freeze")
    norms = {n: m.training for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert not any(v for n, v in norms.items() if n.startswith("backbone."))
    assert all(v for n, v in norms.items() if n.startswith("head."))


@pytest.mark.parametrize("source", ["timm:test_efficientnet", "timm:test_resnet", "timm:test_convnext",
                                    "timm:test_vit"])
def test_any_backbone_gives_a_pyramid_and_odd_sizes_are_padded(source):
    model = build_segmentation_model(source, 4, pretrained=False, image_size=32, channels=16).eval()
    pyramid = model.backbone(torch.zeros(1, 3, 64, 64))
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert [p.shape[1] for p in pyramid] == model.backbone.out_channels
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4, 32, 32)
        if "vit" not in source:  # ViT-style models fix their input size (set to the run's)
            assert model(torch.zeros(1, 3, 45, 70)).shape == (1, 4, 45, 70)


def test_torchvision_backbone_pyramid_from_its_forward_chain():
    import torchvision

    from transferkit.models.pyramid import feature_pyramid

    body = torchvision.models.resnet18()
    body.fc = torch.nn.Identity()
    pyramid = feature_pyramid(body, "torchvision:resnet18")
    assert pyramid.layout.taps == ("relu", "layer1.1", "layer2.1", "layer3.1", "layer4.1")
    assert [p.shape[1] for p in pyramid(torch.zeros(1, 3, 64, 64))] == [3, 64, 64, 128, 256, 512]


# --- data, augmentation, metrics -----------------------------------------------------------------------------


def test_joint_augmentation_keeps_image_and_mask_aligned():
    """Four quadrants, each its own colour and class: after random crops, flips and rotations every pixel's colour
    still names its mask's class (away from the borders interpolation blurs)."""
    colours = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], dtype=np.uint8)
    classes = np.zeros((48, 64), np.int64)
    classes[:24, 32:], classes[24:, :32], classes[24:, 32:] = 1, 2, 3
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.from_numpy(colours[classes]).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.from_numpy(classes))
    prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=32, crop_pct=1.0,
                         interpolation="bilinear", source="test")
    for augment in ("light", "heavy"):
        train, _ = mask_transforms(prep, augment, ignore_index=255)
        for seed in range(8):
            torch.manual_seed(seed)
            out_image, out_mask = train(image, mask)
            assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32)
            rgb = ((out_image * 0.5 + 0.5) * 255).permute(1, 2, 0).numpy()
            labels = out_mask.numpy()
            pad = np.pad(labels, 1, mode="edge")
            interior = np.all([pad[1 + dy:33 + dy, 1 + dx:33 + dx] == labels for dy in (-1, 0, 1)
                               for dx in (-1, 0, 1)], axis=0) & (labels != 255)
            if augment == "heavy":  # colour jitter: compare which colour is nearest, not the exact value
                nearest = np.argmin(((rgb[..., None, :] / np.maximum(rgb.max(-1, keepdims=True)[..., None], 1)
                                      - colours / 250.0) ** 2).sum(-1), axis=-1)
            else:
                nearest = np.argmin(((rgb[..., None, :] - colours) ** 2).sum(-1), axis=-1)
            assert interior.sum() > 100
            assert (nearest[interior] == labels[interior]).mean() > 0.97, (augment, seed)
    _, evaluation = mask_transforms(prep, "light")
    _, resized = evaluation(image, mask)
    assert set(np.unique(resized.numpy())) <= {0, 1, 2, 3}  # nearest neighbours: no blended class values


def test_metrics_against_hand_computed_iou_with_absent_classes_and_ignore_index():
    from torchmetrics.functional.classification import multiclass_jaccard_index

    truth = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 3]])
    predicted = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 0]])  # class 2 predicted only on an ignored pixel
    matrix = confusion(predicted, truth, 5, 255)
    assert matrix.sum() == 7  # the ignored pixel counts nowhere
    result = scores(matrix, ["bg", "a", "b", "c", "d"])
    # bg: TP 2, FP 2 (a and c predicted bg), FN 1 -> 2/5; a: TP 2, FP 1, FN 1 -> 2/4; c: TP 0, FN 1 -> 0;
    # b (only predicted on the ignored pixel) and d (nowhere) are absent.
    iou = {k: v["iou"] for k, v in result["per_class"].items()}
    assert iou == {"bg": pytest.approx(0.4), "a": pytest.approx(0.5), "b": None, "c": 0.0, "d": None}
    assert result["miou"] == pytest.approx((0.4 + 0.5 + 0.0) / 3) and result["absent"] == ["b", "d"]
    assert result["per_class"]["a"]["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert result["pixel_accuracy"] == pytest.approx(4 / 7)
    assert result["foreground_iou"] == pytest.approx(2 / 5)  # "not background": TP 2 (a as a), union 5
    reference = multiclass_jaccard_index(predicted, truth, 5, average="macro", ignore_index=255)
    assert result["miou"] == pytest.approx(float(reference))  # torchmetrics leaves absent classes out too


def test_validation_and_test_figures_are_sums_that_reduce_over_processes(scenes, tiny_weights):
    """Each process of a distributed run scores its share: the loop adds the objective's per-batch sums and
    World.sum adds them over processes, Task.evaluate sums its confusion matrices with reduce=World.sum. Split in
    two shards (two "processes"), the figures equal those of the whole split."""
    from transferkit.data.masks import MaskDataset
    from transferkit.tasks.segmentation import SegmentationObjective

    task = get_task("segmentation")
    model = build_segmentation_model("timm:test_efficientnet", 3, weights=str(tiny_weights), image_size=32,
                                     channels=16).eval()
    data = load_mask_training_data(scenes)
    _, evaluation = mask_transforms(model.preprocessing, "none")
    pairs = [MaskDataset(data.test, evaluation)[i] for i in range(len(data.test))]
    images, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    masks[0, :4] = 255  # ignored pixels count nowhere, in any shard
    objective = SegmentationObjective(CLASSES, ignore_index=255)
    with torch.no_grad():
        logits = model(images)
    whole = objective.summarise(objective.figures(logits, masks).tolist())
    shards = [objective.figures(logits[:2], masks[:2]), objective.figures(logits[2:], masks[2:])]
    reduced = objective.summarise((shards[0] + shards[1]).tolist())  # what World.sum returns in every process
    assert reduced == pytest.approx(whole)
    matrix = confusion(logits.argmax(1), masks, 3, 255).numpy()
    assert whole["miou"] == pytest.approx(scores(matrix, CLASSES)["miou"])
    assert whole["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    per_pixel = torch.nn.functional.cross_entropy(logits, masks, ignore_index=255)
    assert whole["loss"] == pytest.approx(float(per_pixel), rel=1e-5)
    # the test split: each process evaluates its share; reduce sums the matrices and image counts
    full = task.evaluate(model, data.test, CLASSES)
    halves = [data.test.subset([0, 1, 2]), data.test.subset([3, 4, 5])]
    parts = [task.evaluate(model, half, CLASSES) for half in halves]
    summed = [sum(v) for v in zip(*([*np.ravel(p["confusion_matrix"]), p["n"]] for p in parts), strict=True)]
    shared = task.evaluate(model, halves[0], CLASSES, reduce=lambda values: summed)
    assert shared["n"] == 6 and shared["confusion_matrix"] == full["confusion_matrix"]
    assert shared["miou"] == full["miou"] and shared["per_class"] == full["per_class"]


def test_each_training_example_is_augmented_under_its_own_seed(scenes):
    """Resume-exact augmentation with any number of workers: an (index, seed) key gives the same image and mask
    whatever the global random state, and other seeds give other crops."""
    from transferkit.data.masks import MaskDataset

    prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=32, crop_pct=1.0,
                         interpolation="bilinear", source="test")
    data = load_mask_training_data(scenes)
    train, _ = mask_transforms(prep, "light")
    dataset = MaskDataset(data.train, train)
    torch.manual_seed(1)
    first = dataset[(3, 1234)]
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    again = dataset[(3, 1234)]
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is left as it was
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert any(not torch.equal(first[1], dataset[(3, seed)][1]) for seed in range(5))


def test_class_weights_auto_weigh_pixels_and_the_loss_leaves_ignored_pixels_out(scenes):
    from transferkit.prepare import class_weights
    from transferkit.tasks.segmentation import SegmentationLoss

    data = load_mask_training_data(scenes)
    counts = np.bincount(np.concatenate([read_mask(m).ravel() for m in data.train.masks]), minlength=3)
    weights = class_weights(data, TrainConfig(data=str(scenes), class_weights="auto").validate())
    assert weights == pytest.approx((counts.sum() / (3 * counts)).tolist())  # inverse pixel frequency
    # ... and segmentation's default: unweighted, the background's majority of pixels kept fashion-scenes' item
    # classes at IoU 0 (README). Classification keeps none; an explicit choice stands.
    assert TrainConfig(data=str(scenes)).validate().class_weights == "auto"
    assert class_weights(data, TrainConfig(data=str(scenes)).validate()) == pytest.approx(weights)
    assert TrainConfig(data=str(scenes), class_weights="none").validate().class_weights == "none"
    assert TrainConfig(data="builtin:digits").validate().class_weights == "none"
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    masks[0, 0] = 255
    loss = SegmentationLoss(torch.tensor(weights, dtype=torch.float32), ignore_index=255)(logits, masks)
    valid = masks != 255
    picked = logits.permute(0, 2, 3, 1)[valid].log_softmax(-1)[torch.arange(int(valid.sum())), masks[valid]]
    w = torch.tensor(weights)[masks[valid]]
    assert float(loss) == pytest.approx(float(-(w * picked).sum() / w.sum()), rel=1e-5)
    dice = SegmentationLoss(None, 255, dice_weight=0.5)(logits, masks)
    assert float(dice) > float(SegmentationLoss(None, 255)(logits, masks))  # Dice adds a positive term


def test_mask_folders_manifests_palettes_and_per_class_meaning(tmp_path):
    root = make_scenes(tmp_path / "flat", {"all": 20}, layout="images/split")
    (root / "images" / "all").rename(root / "img")
    (root / "masks" / "all").rename(root / "msk")
    (root / "images").rmdir(), (root / "masks").rmdir()
    (root / "img").rename(root / "images")
    (root / "msk").rename(root / "masks")
    data = load_mask_training_data(root, val_fraction=0.25, per_class=6, seed=1)
    assert (len(data.train), len(data.val), data.test) == (6, 5, None) and data.classes == CLASSES
    assert data.train.class_counts()["red"] > 0 and data.unit == "images"
    # a CSV manifest with palette masks and classes.txt
    rows = ["image,mask,split"]
    for i, image in enumerate(sorted((root / "images").glob("*.png"))):
        palette = Image.open(root / "masks" / image.name).convert("P")
        palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
        palette.save(tmp_path / f"p{i}.png")
        rows.append(f"{image},p{i}.png,{'test' if i >= 16 else 'train'}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "classes.txt").write_text("bg\nred\nblue\n")
    data = load_mask_training_data(tmp_path / "manifest.csv", per_class=8)
    assert data.classes == ["bg", "red", "blue"] and len(data.train) == 8 and len(data.test) == 4
    assert set(np.unique(read_mask(data.test.masks[0]))) <= {0, 1, 2}
    # split sub-folders of their own (root/train/images ...), no label map: classes are the values found
    other = make_scenes(tmp_path / "nested" / "other", layout="split/images")
    (other / "classes.json").unlink()
    data = load_mask_training_data(other)
    assert data.classes == ["0", "1", "2"] and (len(data.train), len(data.val), len(data.test)) == (24, 6, 6)


# --- train, evaluate, predict, load ------------------------------------------------------------------------


def test_train_evaluate_predict_load_learns_above_a_floor(scenes, tiny_weights, tmp_path):
    """Two-stage on 24 tiny scenes: test mIoU above 0.6 (predicting background everywhere scores about 0.25; this
    run measured 0.86)."""
    result = transferkit.train(scenes, out=str(tmp_path / "run"), progress=False,
                               **tiny(tiny_weights, strategy="two-stage", epochs=4, head_epochs=1, head_lr=1e-2,
                                      lr=3e-3, patience=0))
    assert result.task == "segmentation" and result.val_metric == "miou"
    assert result.test["miou"] > 0.6, result.test
    assert result.test["n"] == 6 and set(result.test["per_class"]) == set(CLASSES)
    info = json.loads((tmp_path / "run" / "transferkit.json").read_text())
    assert info["task"] == "segmentation" and info["head"]["decoder"] == "unet"
    assert info["metrics"]["val_miou"] == result.val_score and "val_miou" in result.history[0]
    loaded = transferkit.load(tmp_path / "run")
    images = sorted((scenes / "images" / "test").glob("*.png"))
    predictions = loaded.predict(images)
    direct = result.model.predict(images)
    assert all((a.mask == b.mask).all() for a, b in zip(predictions, direct, strict=True))
    assert predictions[0].mask.shape == (32, 32) and sum(predictions[0].fractions.values()) == pytest.approx(1)
    evaluated = loaded.evaluate()  # the run's own data: its test split (the split rule of classification)
    assert evaluated["miou"] == pytest.approx(result.test["miou"])
    assert (evaluated["split"], evaluated["seen_in_training"], evaluated["data"]) == ("test", False, str(scenes))
    big = Image.open(images[0]).resize((50, 41))  # any size: the mask comes back at the image's size
    assert loaded.predict([big])[0].mask.shape == (41, 50)
    shutil.rmtree(scenes / "images" / "test")
    shutil.rmtree(scenes / "masks" / "test")
    own = loaded.evaluate(scenes)  # no test split left: the val split, which the run saw, and says so
    assert own["split"] == "val" and own["seen_in_training"] and own["n"] == 6


def test_command_line_train_evaluate_predict(capsys, scenes, tiny_weights, tmp_path):
    run = tmp_path / "seg"
    code, out, err = run_cli(capsys, "train", "--data", scenes, "--strategy", "linear-probe", "--epochs", "1",
                             "--decoder", "fpn", "--decoder-channels", "32", "--out", run, *tiny_flags(tiny_weights))
    assert code == 0, err
    assert "test mIoU" in out and "mean Dice" in out
    code, out, err = run_cli(capsys, "evaluate", run, "--data", scenes, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["n"] == 6 and {"miou", "mean_dice", "pixel_accuracy", "per_class"} <= set(report)
    assert (run / "evaluation" / "per_class_iou.csv").read_text().startswith("class,iou,dice")
    assert (run / "evaluation" / "examples.png").read_bytes()[:4] == b"\x89PNG"
    code, out, _ = run_cli(capsys, "evaluate", run)  # the run's own test split
    assert code == 0 and "mIoU" in out and "absent" not in out.split("\n")[0]
    masks = tmp_path / "masks"
    code, out, err = run_cli(capsys, "predict", run, scenes / "images" / "test", "--out", masks, "--json")
    assert code == 0, err
    rows = json.loads(out)["predictions"]
    assert len(rows) == 6 and set(rows[0]["fractions"]) == set(CLASSES)
    written = np.asarray(Image.open(rows[0]["mask"]))
    assert written.shape == (32, 32) and written.dtype == np.uint8 and written.max() <= 2
    assert Image.open(rows[0]["overlay"]).mode == "RGB"


def bad_scenes(tmp_path: Path) -> list[tuple[Path | str, str]]:
    cases = []
    missing = make_scenes(tmp_path / "missing", {"train": 4})
    (missing / "masks" / "train" / "002.png").unlink()
    cases.append((missing, "No mask for image"))
    size = make_scenes(tmp_path / "size", {"train": 4})
    Image.new("L", (20, 32)).save(size / "masks" / "train" / "001.png")
    cases.append((size, "is 20x32 but its image"))
    values = make_scenes(tmp_path / "values", {"train": 4})
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(values / "masks" / "train" / "003.png")
    cases.append((values, "value(s) 7 outside the label map"))
    rgb = make_scenes(tmp_path / "rgb", {"train": 4})
    Image.fromarray(np.random.default_rng(0).integers(0, 3, (32, 32, 3)).astype(np.uint8)).save(
        rgb / "masks" / "train" / "000.png")
    cases.append((rgb, "is an RGB image, not a single-channel class-index or palette PNG"))
    manifest = make_scenes(tmp_path / "csv", {"train": 4})
    (manifest / "m.csv").write_text("image,mask\nimages/train/000.png,masks/train/000.png\n"
                                    "images/train/001.png,masks/train/nope.png\n")
    cases.append((manifest / "m.csv", "line 3: mask"))
    empty = make_scenes(tmp_path / "empty", {"train": 4})
    for path in (empty / "masks" / "train").glob("*.png"):
        Image.new("L", (32, 32)).save(path)
    cases.append((empty, "holds only class 0"))
    return cases


def test_bad_segmentation_input_gives_one_line_exit_2_and_writes_nothing(capsys, tmp_path, tiny_weights, scenes):
    out_dir = tmp_path / "out"
    for data, message in bad_scenes(tmp_path):
        code, _, err = run_cli(capsys, "train", "--data", data, "--out", out_dir, *tiny_flags(tiny_weights))
        assert code == 2 and message in err and err.startswith("error:") and err.count("\n") == 1, (data, err)
        assert not out_dir.exists()
    code, _, err = run_cli(capsys, "train", "--data", scenes, "--task", "detection2", "--out", out_dir, "-q")
    assert code == 2 and "'task' parameter must be" in err and not out_dir.exists()
    code, _, err = run_cli(capsys, "train", "--data", "builtin:digits", "--task", "segmentation", "--out", out_dir,
                           "-q")
    assert code == 2 and "classification dataset (no masks)" in err and not out_dir.exists()


def test_resume_of_a_segmentation_run_equals_an_uninterrupted_one(few_scenes, tiny_weights, tmp_path):
    scenes = few_scenes
    options = tiny(tiny_weights, strategy="two-stage", epochs=2, head_epochs=1, patience=0, augment="light",
                   dice_weight=0.5, l2_sp=0.01)
    full = transferkit.train(scenes, out=str(tmp_path / "full"), progress=False, **options)
    with pytest.raises(KeyboardInterrupt):
        transferkit.train(scenes, out=str(tmp_path / "cut"), progress=False, callbacks=[InterruptAt(2)], **options)
    resumed = transferkit.train(resume=tmp_path / "cut", progress=False)
    a, b = full.model.model.state_dict(), resumed.model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_miou"] for h in full.history] == [h["val_miou"] for h in resumed.history]
    assert resumed.test["miou"] == full.test["miou"]


# --- the built-in, compare, advise --------------------------------------------------------------------------


def test_builtin_fashion_scenes_is_read_by_the_mask_reader(monkeypatch, tmp_path):
    from transferkit.data import scenes as scenes_module

    monkeypatch.setenv("TRANSFERKIT_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(scenes_module, "BUILTIN_SCENES", {"train_scenes": 12, "test_scenes": 4, "size": 32, "seed": 0})
    config = TrainConfig(data="builtin:fashion-scenes", per_class=8, seed=0).validate()
    assert config.task == "segmentation"
    data = get_task("segmentation").load_data(config)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 4)  # 8 images; val 8 x 0.2 / 0.8
    assert data.classes[0] == "background" and len(data.classes) == 11
    assert data.train.items[0].parent.name == "train" and data.test.items[0].parent.name == "test"
    with pytest.raises(TransferKitError, match="leaves no validation images"):
        get_task("segmentation").load_data(TrainConfig(data="builtin:fashion-scenes", per_class=12).validate())


def test_compare_reports_miou_and_draws_each_strategy(few_scenes, tiny_weights, tmp_path):
    report = transferkit.compare(str(few_scenes), model="timm:test_efficientnet",
                                 strategies=["scratch", "linear-probe"], per_class=[4, 8], seeds=1,
                                 out=tmp_path / "cmp", weights=str(tiny_weights),
                                 image_size=32, batch_size=4, epochs=1, head_epochs=1, workers=0, augment="none",
                                 decoder_channels=16, tune="none")
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert results["task"] == "segmentation" and results["metrics"] == ["miou", "mean_dice"]
    # each strategy at 2 sizes, and scratch again at linear-probe's budget (the equal-budget view)
    assert sorted((c["strategy"], c["budget"]) for c in results["cells"]) == [
        ("linear-probe", ""), ("linear-probe", ""), ("scratch", ""), ("scratch", ""),
        ("scratch", "linear-probe"), ("scratch", "linear-probe")]
    assert all(0 <= c["test_accuracy"] <= 1 and c["test_correct"] == "" for c in results["cells"])
    for cell in results["cells"]:  # each score is the run's own mIoU on the test split, evaluated afresh
        assert cell["test_accuracy"] == pytest.approx(transferkit.load(cell["run"]).evaluate(str(few_scenes))["miou"])
    summary = (tmp_path / "cmp" / "summary.md").read_text()
    assert "test mIoU" in summary and "mean Dice" in summary
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "each strategy&#x27;s prediction (8 training images" in html and html.count("data:image/png") == 4
    assert report["factors"][0]["strategy"] == "linear-probe"
    assert not any("/class" in f["converged"]["text"] for f in report["factors"])  # sizes count images


def test_advise_reasons_about_segmentation_data(scenes, tiny_weights):
    advice = transferkit.advise(str(scenes), "timm:test_efficientnet", weights=str(tiny_weights), image_size=32)
    assert advice.measurements["task"] == "segmentation" and advice.strategy in transferkit.STRATEGIES
    assert advice.measurements["images"] == 30 and advice.measurements["classes"] == 3
    assert any("no rule yet" in r or "not measured" in r for r in advice.reasons + advice.warnings)
    assert "--task segmentation" in advice.command(str(scenes), "timm:test_efficientnet")


def test_the_parallel_grid_runner_loads_a_dense_test_split(scenes, tiny_weights, monkeypatch):
    """benchmarks/fair_parallel.py with --set task=segmentation: the test scenes come through the task's reader
    (test_per_class = N test images), not the classification per-class cut (which crashed on mask samples)."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    module = importlib.import_module("fair_parallel")
    given = {**tiny(tiny_weights), "task": "segmentation", "test_per_class": 4}
    assert module._dense(given) and not module._dense({}) and module._dense({"task": "detection"})
    test, classes = module._test_split(str(scenes), given["model"], given, dense=module._dense(given))
    assert len(test) == 4 and classes[0] == "background"  # the reader took the 4 test images of 6
    with pytest.raises(AttributeError):  # what the runner did before it asked the task
        module._test_split(str(scenes), given["model"], given)
    sys.modules.pop("fair_parallel", None)


def test_the_parallel_grid_scores_an_identical_equal_budget_cell_from_scratchs_run(scenes, tiny_weights, tmp_path,
                                                                                    monkeypatch):
    """--recipes shared on a dense task: linear-probe trains the decoder for the same epochs as scratch, so scratch
    at linear-probe's budget is scratch's own run; the parallel runner trains it once and scores it for both cells."""
    import importlib
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    module = importlib.import_module("fair_parallel")
    options = {**tiny(tiny_weights, epochs=1), "task": "segmentation", "test_per_class": 2}
    out = tmp_path / "grid"
    module.main(["--data", str(scenes), "--model", options.pop("model"), "--strategies", "scratch,linear-probe",
                 "--per-class", "6", "--seeds", "1", "--tune", "none", "--recipes", "shared", "--workers", "1",
                 "--out", str(out), *[arg for k, v in options.items() for arg in ("--set", f"{k}={v}")]])
    cells = {(c["strategy"], c["budget"]): c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert set(cells) == {("scratch", ""), ("linear-probe", ""), ("scratch", "linear-probe")}
    own, budget = cells["scratch", ""], cells["scratch", "linear-probe"]
    assert budget["run"] == own["run"] and budget["test_accuracy"] == own["test_accuracy"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["linear-probe-n6-s0", "scratch-n6-s0"]
    sys.modules.pop("fair_parallel", None)
