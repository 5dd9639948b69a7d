"""Language models: text data, tiny BERT runs end to end, LoRA save/load, the real minilm-l6, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import transferkit
from transferkit.data.text import LengthBucketSampler, load_text_training_data
from transferkit.errors import TransferKitError
from transferkit.strategies import apply_phase, build_phases

POSITIVE = ["good", "great", "wonderful", "moving", "superb", "lovely"]
NEGATIVE = ["bad", "awful", "boring", "poor", "dreadful", "dull"]
FILLER = ["the", "film", "was", "a", "story", "and", "acting", "really", "quite"]


def sentence(words, i):
    return " ".join([FILLER[i % 9], FILLER[(i + 3) % 9], words[i % 6], words[(i + 2) % 6], FILLER[(i + 5) % 9]])


def write_csv(path, n=12, extra_rows=()):
    rows = ["text,label"] + [f"{sentence(POSITIVE, i)},pos" for i in range(n)] + \
           [f"{sentence(NEGATIVE, i)},neg" for i in range(n)] + list(extra_rows)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A local Hugging Face folder: a 2-layer BERT with hidden size 32 and a 60-word vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, "new", "text"]
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture
def reviews(tmp_path):
    return write_csv(tmp_path / "reviews.csv")


def tiny(tiny_bert, **extra):
    return {"model": str(tiny_bert), "batch_size": 8, "epochs": 2, "head_epochs": 1, "patience": 0,
            "progress": False, **extra}


def write_held_out_csv(path):
    """Reviews built like :func:`write_csv`'s but from other word combinations (``sentence`` repeats every 18, and
    the training file uses 0-11): none of these 12 texts is in training."""
    rows = ["text,label"] + [f"{sentence(POSITIVE, i)},pos" for i in range(12, 18)] + \
           [f"{sentence(NEGATIVE, i)},neg" for i in range(12, 18)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_fine_tune_tiny_bert_end_to_end(reviews, tiny_bert, tmp_path):
    """Fine-tuning learns: evaluated on held-out reviews (seeds 0-2 each reach 1.0 with these settings; chance 0.5)."""
    held_out = write_held_out_csv(tmp_path / "held-out.csv")
    train_texts = set(reviews.read_text(encoding="utf-8").splitlines())
    assert not train_texts & set(held_out.read_text(encoding="utf-8").splitlines()[1:])
    result = transferkit.train(reviews, strategy="fine-tune", out=str(tmp_path / "run"), lr=3e-3,
                               **tiny(tiny_bert, epochs=10, batch_size=4))
    run = tmp_path / "run"
    info = json.loads((run / "transferkit.json").read_text())
    assert info["modality"] == "text" and info["classes"] == ["neg", "pos"]
    assert (run / "tokenizer" / "tokenizer.json").is_file() and (run / "encoder" / "config.json").is_file()
    texts = ["a wonderful, moving film", "dull and awful acting"]
    loaded = transferkit.load(run)
    assert loaded.predict_proba(texts) == pytest.approx(result.model.predict_proba(texts), abs=1e-5)
    assert [p.label for p in loaded.predict(texts)] == ["pos", "neg"]
    metrics = loaded.evaluate(held_out)
    assert metrics["n"] == 12 and metrics["accuracy"] >= 0.9 and set(metrics["per_class"]) == {"neg", "pos"}


def test_text_layer_groups_and_strategy_phases(tiny_bert):
    from transferkit.models.text import load_text_model

    model = load_text_model(str(tiny_bert), 2)
    groups = model.layer_groups()
    assert [g.name for g in groups] == ["embeddings", "layer.0", "layer.1", "head"]
    head, full = build_phases("two-stage", groups, epochs=1, lr=3e-5)
    apply_phase(model, groups, head)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"head"}
    apply_phase(model, groups, full)
    assert all(p.requires_grad for p in model.parameters())
    phases = build_phases("progressive", groups, epochs=1, head_epochs=1)
    assert [sorted(p.lrs) for p in phases] == [["head"], ["head", "layer.1"], ["head", "layer.0", "layer.1"],
                                               ["embeddings", "head", "layer.0", "layer.1"]]


def test_lora_trains_only_adapters_and_head_and_reloads_identically(reviews, tiny_bert, tmp_path):
    seen = {}

    class Check(transferkit.training.Callback):
        def __init__(self, model):
            self.model = model

        def on_epoch_end(self, record, state):
            seen["trainable"] = {n for n, p in self.model.named_parameters() if p.requires_grad}

    original = transferkit.api.fit

    def spy(model, *args, callbacks=(), **kwargs):
        return original(model, *args, callbacks=[*callbacks, Check(model)], **kwargs)

    import transferkit.api as api

    api_fit, api.fit = api.fit, spy
    try:
        result = transferkit.train(reviews, strategy="lora", out=str(tmp_path / "lora"), lora_rank=4,
                                   **tiny(tiny_bert))
    finally:
        api.fit = api_fit
    assert seen["trainable"] and all("lora_" in n or n.startswith("head.") for n in seen["trainable"])
    assert any(n.startswith("head.") for n in seen["trainable"])
    run = tmp_path / "lora"
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "head.safetensors").is_file()
    assert not (run / "model.safetensors").exists()
    texts = ["great superb story", "boring poor film", "new text"]
    expected = result.model.predict_proba(texts)
    merged, unmerged = transferkit.load(run), transferkit.load(run, merge=False)
    assert merged.predict_proba(texts) == pytest.approx(expected, abs=1e-5)
    assert unmerged.predict_proba(texts) == pytest.approx(expected, abs=1e-5)
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())


def test_linear_probe_uses_cached_text_features(reviews, tiny_bert, tmp_path):
    result = transferkit.train(reviews, strategy="linear-probe", out=str(tmp_path / "lp"), **tiny(tiny_bert))
    assert [h["inputs"] for h in result.history] == ["exact fit on cached features"]


def test_cli_predict_strings_and_file(capsys, reviews, tiny_bert, tmp_path):
    from test_cli import run_cli

    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", reviews, "--model", tiny_bert, "--strategy", "fine-tune",
                           "--epochs", "1", "--batch-size", "8", "--out", run, "-q")
    assert code == 0, err
    code, out, err = run_cli(capsys, "predict", run, "a wonderful, moving film", "--json")
    assert code == 0, err
    (prediction,) = json.loads(out)["predictions"]
    assert prediction["source"] == "a wonderful, moving film" and prediction["label"] in ("neg", "pos")
    lines = tmp_path / "texts.txt"
    lines.write_text("great film\n\nawful film\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "predict", run, "--file", lines, "--json")
    assert code == 0 and [p["source"] for p in json.loads(out)["predictions"]] == ["great film", "awful film"]


def test_text_folder_formats(tmp_path):
    for label, words in (("pos", POSITIVE), ("neg", NEGATIVE)):
        for i in range(4):
            (tmp_path / "docs" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "docs" / label / f"{i}.txt").write_text(sentence(words, i), encoding="utf-8")
    data = load_text_training_data(tmp_path / "docs", val_fraction=0.25)
    assert data.classes == ["neg", "pos"] and (len(data.train), len(data.val)) == (6, 2)
    split = tmp_path / "split"
    split.mkdir()
    write_csv(split / "train.csv", n=5)
    (split / "val.jsonl").write_text("\n".join(json.dumps({"review": sentence(POSITIVE, i), "stars": "pos"})
                                               for i in range(3)))
    expected = r"train.csv has no column 'review' or 'stars'; its columns are \['text', 'label'\]"
    with pytest.raises(TransferKitError, match=expected):
        load_text_training_data(split, text_column="review", label_column="stars")
    (split / "val.jsonl").write_text("\n".join(json.dumps({"text": sentence(POSITIVE, i), "label": "pos"})
                                               for i in range(3)))
    data = load_text_training_data(split)
    assert (len(data.train), len(data.val)) == (10, 3)


@pytest.mark.parametrize("content, message", [
    (b"text,label\nfine film,pos\n,neg\n", "empty text on line"),
    (b"text,label\nbon film \xe9t\xe9,pos\nbad,neg\n", "is not UTF-8"),
    (b"words,tag\nfine,pos\n", "no column 'text' or 'label'; its columns are ['words', 'tag']"),
])
def test_bad_text_files(tmp_path, content, message):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(TransferKitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_text_training_data(path)


def test_label_only_in_validation(tmp_path):
    split = tmp_path / "split"
    split.mkdir()
    write_csv(split / "train.csv", n=3)
    (split / "val.csv").write_text("text,label\nmeh film,neutral\n", encoding="utf-8")
    with pytest.raises(TransferKitError, match="'neutral' appear in the val split but never in training"):
        load_text_training_data(split)


def test_text_model_with_image_data_is_refused(class_folder, tiny_bert, tmp_path):
    with pytest.raises(TransferKitError, match="is a language model but --data"):
        transferkit.train(class_folder, out=str(tmp_path / "x"), **tiny(tiny_bert))


def test_length_buckets_cover_every_index_once():
    lengths = [5, 100, 80, 6, 90, 5, 85, 3]
    torch.manual_seed(0)
    batches = list(LengthBucketSampler(lengths, batch_size=2, shuffle=True))
    assert sorted(i for b in batches for i in b) == list(range(8)) and len(batches) == 4
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spreads) <= 15  # short texts batched with short ones


@pytest.mark.slow
def test_minilm_l6_one_step_save_load_identical(tmp_path):
    result = transferkit.train("builtin:bbc-news", model="minilm-l6", strategy="fine-tune", per_class=2, epochs=1,
                               max_length=64, batch_size=8, evaluate_test=False, out=str(tmp_path / "m"),
                               progress=False)
    assert result.model.classes == ["business", "entertainment", "politics", "sports", "tech"]
    texts = ["The central bank raised interest rates again.", "The striker scored twice in the final."]
    assert transferkit.load(tmp_path / "m").predict_proba(texts) == pytest.approx(
        result.model.predict_proba(texts), abs=1e-5)


def test_compare_and_advise_work_for_text(capsys, tiny_bert, tmp_path):
    from test_cli import run_cli
    from transferkit.experiments import compare

    data = tmp_path / "reviews"
    data.mkdir()
    write_csv(data / "train.csv", n=12)
    write_csv(data / "test.csv", n=6)
    options = {k: v for k, v in tiny(tiny_bert).items() if k != "model"}
    compare(str(data), model=str(tiny_bert), strategies=["scratch", "linear-probe"], per_class=[4, 8], seeds=1,
            out=tmp_path / "report", tune="none", **options)
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert len(saved["cells"]) == 6  # each strategy at 2 sizes, and scratch at linear-probe's budget
    for cell in saved["cells"]:  # each cell's score is its own run's score on the 12 test reviews
        run = Path(cell["run"])
        metrics = json.loads((run / "transferkit.json").read_text())["metrics"]
        scored = transferkit.load(run).evaluate(str(data))
        assert scored["split"] == "test" and scored["n"] == 12 and len(cell["test_correct"]) == 12
        assert cell["test_accuracy"] == pytest.approx(scored["accuracy"])
        assert len(cell["curve"]) == metrics["epochs_run"] and cell["curve"][-1]["epoch"] == metrics["epochs_run"]
        # retention (sentence-embedding cosine): a frozen backbone keeps it exactly; scratch has none
        if cell["strategy"] == "linear-probe":
            assert cell["retention"] == pytest.approx(1.0)
        else:
            assert cell["retention"] is None
    assert (tmp_path / "report" / "report.html").read_text().count("data:image/png;base64,") == 4

    code, out, err = run_cli(capsys, "advise", "--data", str(data), "--model", str(tiny_bert), "--json")
    assert code == 0, err
    advice = json.loads(out)
    m = advice["measurements"]
    assert m["modality"] == "text" and m["samples"] == 24 and m["domain_measure"] == "tokens per word"
    assert m["domain_distance"] == pytest.approx(1.0)  # every word of the synthetic reviews is in the vocabulary
    assert advice["strategy"] == "linear-probe" and "--augment" not in advice["command"]


def test_feature_cache_key_covers_the_tokenizer_contents(tiny_bert, reviews, tmp_path):
    """Same encoder, same texts, a tokenizer whose vocabulary maps two words the other way: other features."""
    import shutil

    from transformers import AutoTokenizer

    from transferkit.features import cache_key
    from transferkit.models.text import load_text_model

    model = load_text_model(str(tiny_bert), 2)
    data = load_text_training_data(reviews)
    key = cache_key(model, data.train, None, 1, 0)
    model.tokenizer("a film", truncation=True, max_length=16)  # using the tokenizer must not change the key
    assert cache_key(model, data.train, None, 1, 0) == key
    assert cache_key(model, data.train, None, 1, 3) == key  # texts are not augmented: the seed does not matter
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_bert, other)
    saved = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = saved["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
    (other / "tokenizer.json").write_text(json.dumps(saved), encoding="utf-8")
    model.tokenizer = AutoTokenizer.from_pretrained(str(other))
    assert model.tokenizer("good")["input_ids"] != AutoTokenizer.from_pretrained(str(tiny_bert))("good")["input_ids"]
    assert cache_key(model, data.train, None, 1, 0) != key


def _edit_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_the_unused_pooler_is_reported_as_expected(tiny_bert, caplog):
    from transferkit.models.text import load_text_model

    with caplog.at_level("INFO", logger="transferkit"):
        model = load_text_model(str(tiny_bert), 2)
    # the checkpoint's pooler is not used (the new head pools itself): reported, and said to be expected
    assert "pooler.dense.weight" in caplog.text and "expected" in caplog.text
    assert "pooler" in model.spec.replaced


def test_missing_encoder_weights_are_an_error(tiny_bert, tmp_path):
    import shutil

    from transferkit.models.text import load_text_model

    broken = tmp_path / "broken-bert"
    shutil.copytree(tiny_bert, broken)
    _edit_weights(broken, lambda state: state.pop("encoder.layer.1.attention.self.query.weight"))
    with pytest.raises(TransferKitError, match=r"1 encoder weight\(s\) missing .*encoder\.layer\.1\.attention\.self\."
                                               r"query\.weight.*would start from random values") as info:
        load_text_model(str(broken), 2)
    assert "\n" not in str(info.value) and "Fix:" in str(info.value)


@pytest.fixture(scope="module")
def lora_run(tiny_bert, tmp_path_factory):
    """A LoRA run on a copy of the tiny BERT (the tests below change that copy): (run folder, base folder)."""
    import shutil

    root = tmp_path_factory.mktemp("lora-run")
    base = root / "base-bert"
    shutil.copytree(tiny_bert, base)
    transferkit.train(write_csv(root / "reviews.csv"), strategy="lora", out=str(root / "lora"), lora_rank=4,
                      **tiny(base, epochs=1))
    return root / "lora", base


def test_lora_run_refuses_a_mismatched_head_in_one_line(lora_run):
    from transferkit.training.checkpoint import load_weights, save_weights

    run, _ = lora_run
    texts = ["great superb story", "boring poor film"]
    before = transferkit.load(run).predict_proba(texts)
    head = load_weights(run / "head.safetensors")  # a head for 3 classes in a 2-class run
    save_weights(run / "head.safetensors", {k: torch.cat([v, v[:1]]) for k, v in head.items()})
    try:
        with pytest.raises(TransferKitError, match=r"head\.safetensors does not fit .*wrong shapes: head\.1\.weight "
                                                   r"\(3, 32\) \(expected \(2, 32\)\)") as info:
            transferkit.load(run)
        assert "\n" not in str(info.value)
    finally:
        save_weights(run / "head.safetensors", head)
    assert transferkit.load(run).predict_proba(texts) == pytest.approx(before, abs=1e-6)


def test_lora_run_refuses_a_changed_base(lora_run):
    run, base = lora_run
    _edit_weights(base, lambda state: state["encoder.layer.0.attention.self.query.weight"].add_(0.01))
    with pytest.raises(TransferKitError, match=r"base encoder .* has changed") as info:
        transferkit.load(run)
    message = str(info.value)
    assert "\n" not in message and str(base) in message and "Fix:" in message
    recorded = json.loads((run / "adapter" / "base.json").read_text())  # the hash the run was trained on
    assert recorded["source"] == str(base) and recorded["sha256"][:12] in message
