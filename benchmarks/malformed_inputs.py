"""Malformed-input campaign: property-based (hypothesis) CSV manifests, images, text files and label names.

Every generated case is trained on through the command line (``transferkit train``, in this process, with a
timeout) and must end in a trained run or in one ``error:`` line with exit code 2 — never a traceback, a hang or a
half-written run folder. Image cases also ``predict`` on each odd file with a finished run (a prediction or one
``error:`` line). Each case also carries the outcome transferkit's documented rules call for (below), and a
different outcome is counted as *unexpected*.

Rules the expectations encode (README, "Trustworthiness"):

- CSV files: UTF-8, with or without a BOM, or UTF-16 with its BOM (Excel's "Unicode text"); anything else is an
  error naming the line and the ``iconv`` fix; LF,
  CRLF or CR line ends; blank lines skipped; spaces around column names, labels and paths ignored; a row with more
  or fewer fields than the header is an error naming the line (an unquoted comma); an empty label is an error.
- Images: unreadable, truncated, 32-bit float and larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 MP; a guard
  against decompression bombs, checked from the header) are errors naming the file — or skipped with
  ``--skip-bad-images``, which then decodes every image up front. 16-bit images are scaled to 8 bits (not clipped);
  CMYK, palette, 1-bit and alpha images become RGB (alpha over white); animated GIF/WebP: the first frame; EXIF
  orientation is not applied (pixels as stored, the same in train, predict and serve — as timm and torchvision read
  images). Hidden files (``.name``, e.g. macOS ``._photo.jpg``) and files without an image extension are ignored in
  folders (with a warning counting them); a manifest's rows are all read.
- Texts: NUL bytes and very long lines are kept (the tokenizer truncates); empty texts are an error naming the line.
- Labels: kept exactly as written after trimming surrounding spaces (CSV); labels differing only in case, Unicode
  normalisation or surrounding spaces are an error naming both (they are almost always one class typed twice);
  labels with control characters (a newline from an unclosed quote) are an error.

    python benchmarks/malformed_inputs.py                    # 60 cases per category
    python benchmarks/malformed_inputs.py --examples 200 --seed 1

Prints outcomes per category and writes ``benchmarks/results/malformed_inputs.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, example, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]
TIMEOUT = 120  # seconds per case; a case that takes longer is a hang
WORDS = {"pos": ["good", "great", "wonderful", "moving", "superb", "lovely"],
         "neg": ["bad", "awful", "boring", "poor", "dreadful", "dull"]}

# --- outcomes ---------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    category: str
    case: str
    kind: str  # trained | error | traceback | hang | half-written | bad-exit | vague-error
    expected: str  # trained | error | either
    detail: str = ""
    seconds: float = 0.0
    predictions: list[str] = field(default_factory=list)  # image cases: predict on each odd file

    @property
    def acceptable(self) -> bool:
        return self.kind in ("trained", "error") and all(p in ("predicted", "error") for p in self.predictions)

    @property
    def as_expected(self) -> bool:
        return self.expected in ("either", self.kind)


class CaseTimeout(BaseException):
    """Raised by SIGALRM in the case's thread: a hang (a BaseException, so ``except Exception`` cannot hide it)."""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def run_cli(args: list[str], timeout: int = TIMEOUT) -> tuple[str, str, float]:
    """``transferkit ARGS`` in this process: (kind, detail, seconds). ``kind`` is ``ok`` (exit 0), ``error`` (exit 2
    with exactly one ``error:`` line and no traceback), or what went wrong."""
    from transferkit.cli import main

    package = logging.getLogger("transferkit")
    collect = _Collect()
    package.addHandler(collect)  # also keeps the CLI from adding a handler bound to a redirected stream
    err, out = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    started = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            main(args)
        code: Any = 0
    except SystemExit as exc:
        code = exc.code or 0
    except CaseTimeout:
        return "hang", f"no answer in {timeout} s", time.perf_counter() - started
    except BaseException as exc:  # noqa: BLE001 - the CLI would have shown a traceback
        return "traceback", f"{type(exc).__name__}: {exc}"[:500], time.perf_counter() - started
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        package.removeHandler(collect)
    seconds = time.perf_counter() - started
    text = err.getvalue()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    if code == 0:
        return "ok", "", seconds
    if code == 2 and len(errors) == 1 and "Traceback" not in text:
        return "error", errors[0][:500], seconds
    return "bad-exit", f"exit {code}: {text.strip()[-500:]}", seconds


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def train_case(category: str, case: str, expected: str, args: list[str], out: Path) -> Outcome:
    kind, detail, seconds = run_cli(["train", *args, "--out", str(out), "-q"])
    if kind == "ok":
        kind = "trained" if _loads(out) else "half-written"
    elif kind == "error" and out.exists():
        kind, detail = "half-written", f"{detail} | left {sorted(p.name for p in out.iterdir())}"
    return Outcome(category, case, kind, expected, detail, round(seconds, 2))


def _loads(run: Path) -> bool:
    import transferkit

    try:
        transferkit.load(run)
        return True
    except Exception:  # noqa: BLE001
        return False


# --- shared assets: tiny weights, a tiny BERT, and a finished image run to predict with -------------------------------


class Assets:
    def __init__(self, root: Path) -> None:
        from weights_fingerprint import make_texts, make_weights

        self.root = root
        self.weights = make_weights(root)
        self.bert, _ = make_texts(root)
        self._run: Path | None = None

    def image_flags(self, strategy: str = "linear-probe", workers: int = 0, decoded: str = "auto") -> list[str]:
        return ["--model", "timm:test_efficientnet", "--weights", str(self.weights), "--image-size", "32",
                "--batch-size", "8", "--workers", str(workers), "--strategy", strategy, "--epochs", "1",
                "--head-epochs", "1", "--patience", "0", "--decoded-cache", decoded]

    def text_flags(self, strategy: str = "linear-probe") -> list[str]:
        return ["--model", str(self.bert), "--batch-size", "8", "--strategy", strategy, "--epochs", "1",
                "--head-epochs", "1", "--patience", "0"]

    @property
    def image_run(self) -> Path:
        if self._run is None:
            folder = self.root / "clean-images"
            write_class_folders(folder, ["red", "green", "blue"], 4)
            self._run = self.root / "clean-run"
            kind, detail, _ = run_cli(["train", "--data", str(folder), *self.image_flags(), "--out", str(self._run),
                                       "-q"])
            if kind != "ok":
                raise RuntimeError(f"the reference image run failed: {detail}")
        return self._run


# --- writing images ---------------------------------------------------------------------------------------------------


def noisy(colour: tuple[int, int, int], seed_: int, size: tuple[int, int] = (24, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed_)
    return np.clip(np.array(colour) + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)


def write_class_folders(root: Path, names: list[str], per_class: int) -> list[Path]:
    files = []
    for c, name in enumerate(names):
        for i in range(per_class):
            path = root / name / f"img{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy(COLOURS[c % 3], 100 * c + i)).save(path)
            files.append(path)
    return files


def _encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with a few bytes of data (a decompression bomb's
    header; never decodable)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + \
        chunk(b"IEND", b"")


# (name, readable: decodes to a usable RGB image, ignored in folders: hidden or not an image extension)
IMAGE_KINDS = {
    "zero-byte": (False, False), "truncated": (False, False), "png-named-jpg": (True, False),
    "text-named-png": (False, False), "garbage-bytes": (False, False), "16-bit-grey-png": (True, False),
    "16-bit-grey-tiff": (True, False), "cmyk-jpeg": (True, False), "palette": (True, False),
    "palette-transparent": (True, False), "grey-alpha": (True, False), "rgba": (True, False), "1-bit": (True, False),
    "animated-gif": (True, False), "animated-webp": (True, False), "exif-rotated-jpeg": (True, False),
    "huge-dimensions": (False, False), "one-pixel": (True, False), "elongated": (True, False),
    "macos-appledouble": (False, True), "unknown-extension": (False, True), "float-tiff": (False, False),
    "uppercase-extension": (True, False),
}
TRUNCATABLE = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"]


def write_odd_image(folder: Path, kind: str, index: int, fmt: str, cut: float, colour: tuple[int, int, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.fromarray(noisy(colour, 7000 + index, (28, 20)))
    stem = f"odd{index}"
    if kind == "zero-byte":
        path, data = folder / f"{stem}.png", b""
    elif kind == "truncated":  # large enough that the cut falls in the pixel data, not in the header
        encoded = _encode(Image.fromarray(noisy(colour, 7000 + index, (160, 120))), fmt)
        path, data = folder / f"{stem}.{fmt.lower()}", encoded[:max(1, int(len(encoded) * cut))]
    elif kind == "png-named-jpg":
        path, data = folder / f"{stem}.jpg", _encode(base, "PNG")
    elif kind == "text-named-png":
        path, data = folder / f"{stem}.png", b"this is not an image, it is text\n"
    elif kind == "garbage-bytes":
        path, data = folder / f"{stem}.jpg", np.random.default_rng(index).bytes(600)
    elif kind in ("16-bit-grey-png", "16-bit-grey-tiff"):
        grey = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        fmt16 = "PNG" if kind.endswith("png") else "TIFF"
        path, data = folder / f"{stem}.{fmt16.lower()}", _encode(Image.fromarray(grey), fmt16)
    elif kind == "cmyk-jpeg":
        path, data = folder / f"{stem}.jpg", _encode(base.convert("CMYK"), "JPEG")
    elif kind == "palette":
        path, data = folder / f"{stem}.png", _encode(base.convert("P"), "PNG")
    elif kind == "palette-transparent":
        path, data = folder / f"{stem}.png", _encode(base.convert("P"), "PNG", transparency=0)
    elif kind == "grey-alpha":
        path, data = folder / f"{stem}.png", _encode(base.convert("LA"), "PNG")
    elif kind == "rgba":
        rgba = base.convert("RGBA")
        rgba.putalpha(128)
        path, data = folder / f"{stem}.png", _encode(rgba, "PNG")
    elif kind == "1-bit":
        path, data = folder / f"{stem}.bmp", _encode(base.convert("1"), "BMP")
    elif kind in ("animated-gif", "animated-webp"):
        frames = [Image.fromarray(noisy(colour, 7000 + index + f, (28, 20))) for f in range(3)]
        fmt_a = "GIF" if kind.endswith("gif") else "WEBP"
        path = folder / f"{stem}.{fmt_a.lower()}"
        data = _encode(frames[0], fmt_a, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "exif-rotated-jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
        path, data = folder / f"{stem}.jpg", _encode(base, "JPEG", exif=exif.tobytes())
    elif kind == "huge-dimensions":
        path, data = folder / f"{stem}.png", huge_png_header(60_000, 50_000)
    elif kind == "one-pixel":
        path, data = folder / f"{stem}.png", _encode(Image.new("RGB", (1, 1), colour), "PNG")
    elif kind == "elongated":
        path, data = folder / f"{stem}.png", _encode(Image.fromarray(noisy(colour, index, (400, 2))), "PNG")
    elif kind == "macos-appledouble":
        path, data = folder / f"._{stem}.jpg", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)
    elif kind == "unknown-extension":
        path, data = folder / f"{stem}.heic", np.random.default_rng(index).bytes(300)
    elif kind == "float-tiff":
        values = np.asarray(base.convert("L"), dtype=np.float32) / 255.0
        path, data = folder / f"{stem}.tiff", _encode(Image.fromarray(values, mode="F"), "TIFF")
    elif kind == "uppercase-extension":
        path, data = folder / f"{stem}.PNG", _encode(base, "PNG")
    else:
        raise ValueError(kind)
    path.write_bytes(data)
    return path


# --- category: images -------------------------------------------------------------------------------------------------

image_specs = st.fixed_dictionaries({
    "odd": st.lists(st.tuples(st.sampled_from(sorted(IMAGE_KINDS)), st.sampled_from(TRUNCATABLE),
                              st.floats(0.05, 0.95), st.integers(0, 2)), min_size=1, max_size=3),
    "layout": st.sampled_from(["class-folders", "train-val-tree", "manifest"]),
    "skip_bad": st.booleans(),
    "strategy": st.sampled_from(["linear-probe", "two-stage"]),
    "workers": st.sampled_from([0, 0, 1]),
    "decoded": st.sampled_from(["auto", "off"]),
})


def image_case(spec: dict[str, Any], assets: Assets, folder: Path) -> Outcome:
    names = ["red", "green", "blue"]
    data = folder / "data"
    train = data / "train" if spec["layout"] == "train-val-tree" else data
    files = write_class_folders(train, names, 4)
    if spec["layout"] == "train-val-tree":
        files += write_class_folders(data / "val", names, 1)
    odd = [write_odd_image(train / names[c], kind, i, fmt, cut, COLOURS[c])
           for i, (kind, fmt, cut, c) in enumerate(spec["odd"])]
    target = data
    if spec["layout"] == "manifest":
        target = folder / "manifest.csv"
        rows = ["path,label"] + [f"{p.relative_to(folder)},{p.parent.name}" for p in files + odd]
        target.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["--data", str(target), *assets.image_flags(spec["strategy"], spec["workers"], spec["decoded"])]
    if spec["skip_bad"]:
        args.append("--skip-bad-images")
    # what the rules call for: a file that is read (listed in a manifest, or a visible image file) and is bad stops
    # the run unless --skip-bad-images; with it, each class keeps its 4 good images
    read = [(kind, ok) for kind, _, _, _ in spec["odd"]
            for ok, ignored in [IMAGE_KINDS[kind]] if spec["layout"] == "manifest" or not ignored]
    bad = [kind for kind, ok in read if not ok]
    expected = "error" if bad and not spec["skip_bad"] else "trained"
    label = f"{spec['layout']}: {', '.join(k for k, _, _, _ in spec['odd'])}" + (" (skip)" if spec["skip_bad"] else "")
    outcome = train_case("images", label, expected, args, folder / "run")
    if outcome.kind == "error" and bad and not spec["skip_bad"] and not any(p.name in outcome.detail for p in odd):
        outcome.kind = "vague-error"  # an error that does not name the bad file
    for path in odd:  # predict on each odd file with a finished run
        kind, detail, _ = run_cli(["predict", str(assets.image_run), str(path), "--json"])
        outcome.predictions.append("predicted" if kind == "ok" else kind)
        if kind not in ("ok", "error"):
            outcome.detail += f" | predict {path.name}: {kind} {detail}"
    return outcome


# --- category: CSV manifests ------------------------------------------------------------------------------------------

manifest_specs = st.fixed_dictionaries({
    "bom": st.booleans(),
    "encoding": st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "utf-16"]),
    "line_end": st.sampled_from(["\n", "\r\n", "\r"]),
    "header": st.sampled_from(["path,label", "path,label,split", " Path , Label ", "path,label,notes", "label,path",
                               "file,class", "", "path"]),
    "label_space": st.booleans(),
    "quote_paths": st.booleans(),
    "blank_lines": st.integers(0, 3),
    "accented_label": st.booleans(),
    "row_faults": st.lists(st.sampled_from(["missing-field", "extra-field", "empty-label", "missing-file",
                                            "nul-in-path", "bad-split", "comma-in-quoted-path",
                                            "newline-in-quoted-label", "only-commas"]), max_size=2, unique=True),
    "tsv": st.booleans(),
})


def manifest_case(spec: dict[str, Any], assets: Assets, folder: Path) -> Outcome:
    names = ["red", "green", "blue" if not spec["accented_label"] else "bleu clé"]
    files = write_class_folders(folder / "images", names, 4)
    sep = "\t" if spec["tsv"] else ","
    header = spec["header"].replace(",", sep)
    columns = [c.strip().lower() for c in spec["header"].split(",")] if spec["header"] else []
    rows = []
    for i, path in enumerate(files):
        label = path.parent.name
        cells = {"path": str(path.relative_to(folder)), "label": f" {label} " if spec["label_space"] else label,
                 "split": "val" if i % 4 == 0 else "train", "notes": "n", "file": str(path.relative_to(folder)),
                 "class": label}
        if spec["quote_paths"]:
            cells["path"] = f'"{cells["path"]}"'
        rows.append(sep.join(cells.get(c, "") for c in columns) if columns else sep.join([cells["path"], label]))
    faults = spec["row_faults"]
    extra_dir = folder / "images" / "red"

    def row(path: str, label: str, *more: str) -> str:
        """A fault row with its path and label in the header's column order (then any surplus values)."""
        if "label" not in columns or "path" not in columns:
            return sep.join([path, label, *more])
        cells = [""] * len(columns)
        cells[columns.index("path")], cells[columns.index("label")] = path, label
        return sep.join(cells + list(more))

    if "missing-field" in faults:
        rows.append(str((extra_dir / "img0.png").relative_to(folder)))
    if "extra-field" in faults:
        rows.append(row(str((extra_dir / "img1.png").relative_to(folder)), "red", "surplus", "more"))
    if "empty-label" in faults:
        rows.append(row(str((extra_dir / "img2.png").relative_to(folder)), ""))
    if "missing-file" in faults:
        rows.append(row("images/red/nope.png", "red"))
    if "nul-in-path" in faults:
        rows.append(row("images/red/img\0.png", "red"))
    if "bad-split" in faults and "split" in columns:
        rows.append(sep.join([str((extra_dir / "img3.png").relative_to(folder)), "red", "holdout"]))
    if "comma-in-quoted-path" in faults:
        odd = folder / "images" / "red" / "a,b.png"
        Image.fromarray(noisy(COLOURS[0], 999)).save(odd)
        rows.append(row(f'"{odd.relative_to(folder)}"', "red"))
    if "newline-in-quoted-label" in faults:
        path0 = str((extra_dir / "img0.png").relative_to(folder))
        rows.append(row(path0, '"re\nd"'))
    if "only-commas" in faults:
        rows.append(sep * max(1, len(columns) - 1))
    lines = ([header] if spec["header"] else []) + rows
    for b in range(spec["blank_lines"]):
        lines.insert(1 + (b * 5) % max(1, len(lines) - 1), "")
    text = spec["line_end"].join(lines) + spec["line_end"]
    encoding = spec["encoding"]
    payload = text.encode(encoding)
    if spec["bom"] and encoding == "utf-8":
        payload = b"\xef\xbb\xbf" + payload
    manifest = folder / ("manifest.tsv" if spec["tsv"] else "manifest.csv")
    manifest.write_bytes(payload)

    has_columns = {"path", "label"} <= set(columns)
    non_ascii = spec["accented_label"] and encoding == "latin-1"  # UTF-8 and UTF-16 (with its BOM) are read
    fatal = {"missing-field", "extra-field", "empty-label", "missing-file", "nul-in-path", "newline-in-quoted-label"}
    if "split" in columns:
        fatal.add("bad-split")
    expected = "error" if not has_columns or non_ascii or fatal & set(faults) else "trained"
    bom = " BOM" if spec["bom"] and encoding == "utf-8" else ""
    what = [f"header {spec['header']!r}", encoding + bom, repr(spec["line_end"])]
    what += [f for f in ("label_space", "quote_paths", "accented_label", "tsv") if spec[f]] + list(faults)
    return train_case("csv-manifests", "; ".join(what), expected, ["--data", str(manifest), *assets.image_flags()],
                      folder / "run")


# --- category: text files ---------------------------------------------------------------------------------------------

text_specs = st.fixed_dictionaries({
    "format": st.sampled_from(["csv", "tsv", "jsonl", "txt-folders"]),
    "faults": st.lists(st.sampled_from(["nul-bytes", "latin-1-bytes", "bom", "empty-lines", "blank-text",
                                        "very-long-line", "crlf", "unquoted-comma", "non-object-json",
                                        "missing-label", "numeric-labels", "empty-file", "only-spaces-file",
                                        "line-separator"]),
                       max_size=3, unique=True),
    "strategy": st.sampled_from(["linear-probe", "fine-tune"]),
    "per_class": st.integers(4, 8),
})


def _sentence(label: str, i: int) -> str:
    words = WORDS[label]
    return f"the film was {words[i % 6]} and {words[(i + 2) % 6]} really"


def text_case(spec: dict[str, Any], assets: Assets, folder: Path) -> Outcome:
    fmt, faults = spec["format"], set(spec["faults"])
    rows = [(_sentence(label, i), label) for label in WORDS for i in range(spec["per_class"])]
    if "nul-bytes" in faults:
        rows[0] = ("the film\0 was good\0", rows[0][1])
    if "very-long-line" in faults:
        rows[1] = (" ".join(["superb"] * 40_000), rows[1][1])  # 280,000 characters
    if "blank-text" in faults:
        rows[2] = ("   ", rows[2][1])
    labels_numeric = "numeric-labels" in faults
    expected = "error" if "blank-text" in faults else "trained"
    if fmt == "txt-folders":
        data = folder / "texts"
        for n, (text, label) in enumerate(rows):
            path = data / label / f"doc{n}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            payload = text.encode("utf-8")
            if "latin-1-bytes" in faults and n == 3:
                payload = "un film trés émouvant".encode("latin-1")
                expected = "error"
            if "bom" in faults:
                payload = b"\xef\xbb\xbf" + payload
            if "crlf" in faults:
                payload = payload.replace(b" and ", b"\r\nand ")
            path.write_bytes(payload)
        if "empty-file" in faults:
            (data / "pos" / "empty.txt").write_bytes(b"")
            expected = "error"
        if "only-spaces-file" in faults:
            (data / "neg" / "spaces.txt").write_bytes(b"  \n \n")
            expected = "error"
    elif fmt == "jsonl":
        data = folder / "reviews.jsonl"
        lines = []
        for text, label in rows:
            record: dict[str, Any] = {"text": text, "label": (1 if label == "pos" else 0) if labels_numeric else label}
            lines.append(json.dumps(record, ensure_ascii=False))
        if "missing-label" in faults:
            lines.append(json.dumps({"text": "no label here"}))
            expected = "error"
        if "non-object-json" in faults:
            lines.append(json.dumps(["a", "list", "not", "an", "object"]))
            expected = "error"
        if "line-separator" in faults:
            lines.append(json.dumps({"text": "a superb\u2028film", "label": 1 if labels_numeric else "pos"},
                                    ensure_ascii=False))
        if "empty-lines" in faults:
            lines.insert(2, "")
            lines.append("   ")
        payload = ("\r\n" if "crlf" in faults else "\n").join(lines).encode("utf-8")
        expected = _write_table(data, payload, "\n{\"text\": \"trés bon\", \"label\": \"pos\"}", faults, expected)
    else:
        sep = "\t" if fmt == "tsv" else ","
        data = folder / f"reviews.{fmt}"
        lines = [f"text{sep}label"]
        for text, label in rows:
            value = ("1" if label == "pos" else "0") if labels_numeric else label
            lines.append(f'"{text}"{sep}{value}' if sep == "," else f"{text}{sep}{value}")
        if "unquoted-comma" in faults:
            lines.append(f"a good film, really good{sep}pos".replace(sep, ",", 1) if sep == "," else
                         f"a good film{sep}really good{sep}pos")
            expected = "error"
        if "missing-label" in faults:
            lines.append('"a film without a label"' if sep == "," else "a film without a label")
            expected = "error"
        if "empty-lines" in faults:
            lines.insert(2, "")
            lines.append("")
        payload = ("\r\n" if "crlf" in faults else "\n").join(lines).encode("utf-8") + b"\n"
        expected = _write_table(data, payload, f'"un film trés bon"{sep}pos\n', faults, expected)
    return train_case("text-files", f"{fmt}: {', '.join(sorted(faults)) or 'clean'}", expected,
                      ["--data", str(data), *assets.text_flags(spec["strategy"])], folder / "run")


def _write_table(path: Path, payload: bytes, latin1_line: str, faults: set[str], expected: str) -> str:
    """Write a text table with the file-level faults (a latin-1 line, a BOM, an empty file); the expected outcome."""
    if "latin-1-bytes" in faults:
        payload += latin1_line.encode("latin-1")
        expected = "error"
    if "bom" in faults:
        payload = b"\xef\xbb\xbf" + payload
    if "empty-file" in faults:
        payload, expected = b"", "error"
    path.write_bytes(payload)
    return expected


# --- category: label names --------------------------------------------------------------------------------------------

CURATED_LABELS = ["cat", "Cat", "CAT", "café", unicodedata.normalize("NFD", "café"), " cat", "cat ", "猫", "кошка",
                  "قطة", "🐱", "a b", "[bold]x[/bold]", "1", "01", "-", "_", "x" * 120, "tab\there", "new\nline",
                  "nul\0label", "ß", "SS", "İstanbul", "istanbul", "e\u0301", "\u00e9", ".hidden", "naïve", "N/A"]


def _label_names(draw: Callable) -> list[str]:
    curated = draw(st.lists(st.sampled_from(CURATED_LABELS), min_size=0, max_size=3, unique=True))
    free = draw(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10),
                         min_size=0, max_size=2))
    names = list(dict.fromkeys(curated + free))
    while len(names) < 2:
        names.append(["alpha", "beta"][len(names)])
    return names[:4]


label_specs = st.fixed_dictionaries({
    "names": st.composite(lambda draw: _label_names(draw))(),
    "source": st.sampled_from(["image-folders", "image-manifest", "text-csv", "text-folders"]),
})


def _folder_safe(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..") and \
        len(name.encode("utf-8", "surrogatepass")) < 200


def label_expectation(names: list[str], source: str) -> str:
    """What the documented label rules call for: ``trained`` or ``error``."""
    folders = source in ("image-folders", "text-folders")
    if folders:
        kept = [n for n in names if not n.startswith(".")]  # hidden folders are not classes
    else:
        kept = list(dict.fromkeys(n.strip() for n in names))  # " cat" and "cat" are one label after trimming
        if any(not n for n in kept):
            return "error"  # an empty label
    if any(unicodedata.category(ch) == "Cc" for n in kept for ch in n):
        return "error"
    keys = [unicodedata.normalize("NFC", n.strip()).casefold() for n in kept]
    if len(set(keys)) < len(keys):
        return "error"
    return "trained" if len(kept) >= 2 else "error"


def label_case(spec: dict[str, Any], assets: Assets, folder: Path) -> Outcome:
    names, source = spec["names"], spec["source"]
    if source in ("image-folders", "text-folders"):
        names = [n for n in names if _folder_safe(n)]
        while len(names) < 2:
            names.append(["alpha", "beta"][len(names)])
    expected = label_expectation(names, source)
    if source == "image-folders":
        data = folder / "images"
        for c, name in enumerate(names):
            for i in range(3):
                path = data / name / f"img{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(noisy(COLOURS[c % 3], 100 * c + i)).save(path)
        args = ["--data", str(data), *assets.image_flags()]
    elif source == "image-manifest":
        data = folder / "manifest.csv"
        rows = ["path,label"]
        for c, name in enumerate(names):
            for i in range(3):
                path = folder / "images" / f"c{c}" / f"img{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(noisy(COLOURS[c % 3], 100 * c + i)).save(path)
                quoted = '"' + name.replace('"', '""') + '"'
                rows.append(f"{path.relative_to(folder)},{quoted}")
        data.write_text("\n".join(rows) + "\n", encoding="utf-8")
        args = ["--data", str(data), *assets.image_flags()]
    elif source == "text-csv":
        data = folder / "texts.csv"
        rows = ["text,label"]
        for c, name in enumerate(names):
            quoted = '"' + name.replace('"', '""') + '"'
            rows += [f"{_sentence(['pos', 'neg'][c % 2], i)} {c},{quoted}" for i in range(3)]
        data.write_text("\n".join(rows) + "\n", encoding="utf-8")
        args = ["--data", str(data), *assets.text_flags()]
    else:
        data = folder / "texts"
        for c, name in enumerate(names):
            for i in range(3):
                path = data / name / f"doc{i}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(_sentence(["pos", "neg"][c % 2], i), encoding="utf-8")
        args = ["--data", str(data), *assets.text_flags()]
    return train_case("label-names", f"{source}: {names!r}"[:200], expected, args, folder / "run")


# --- running a category -----------------------------------------------------------------------------------------------

CATEGORIES: dict[str, tuple[Any, Callable[[dict[str, Any], Assets, Path], Outcome]]] = {
    "csv-manifests": (manifest_specs, manifest_case),
    "images": (image_specs, image_case),
    "text-files": (text_specs, text_case),
    "label-names": (label_specs, label_case),
}


def _manifest(**changes: Any) -> dict[str, Any]:
    base = {"bom": False, "encoding": "utf-8", "line_end": "\n", "header": "path,label", "label_space": False,
            "quote_paths": False, "blank_lines": 0, "accented_label": False, "row_faults": [], "tsv": False}
    return {**base, **changes}


def _images(odd: list[tuple[str, str, float, int]], **changes: Any) -> dict[str, Any]:
    base = {"layout": "class-folders", "skip_bad": False, "strategy": "linear-probe", "workers": 0, "decoded": "auto"}
    return {"odd": odd, **base, **changes}


def _texts(fmt: str, faults: list[str], **changes: Any) -> dict[str, Any]:
    return {"format": fmt, "faults": faults, "strategy": "linear-probe", "per_class": 4, **changes}


# Cases every run includes first (each one failed before the fixes it is named after); hypothesis adds generated ones.
EXPLICIT: dict[str, list[dict[str, Any]]] = {
    "csv-manifests": [
        _manifest(bom=True),  # the BOM became part of the first column's name
        _manifest(encoding="latin-1", accented_label=True),  # UnicodeDecodeError traceback
        _manifest(row_faults=["extra-field"]),  # an unquoted comma: trained on the wrong values
        _manifest(encoding="utf-16", header=" Path , Label ", line_end="\r\n", tsv=True),  # Excel "Unicode text"
        _manifest(row_faults=["newline-in-quoted-label"]),  # a label with a newline was a class
    ],
    "images": [
        _images([("macos-appledouble", "PNG", 0.5, 0)]),  # "cannot read image ._odd0.jpg"
        _images([("huge-dimensions", "PNG", 0.5, 1)], skip_bad=True),  # predict: DecompressionBombError traceback
        _images([("truncated", "JPEG", 0.6, 2)], workers=1),  # the error came back with a worker's traceback
        _images([("truncated", "JPEG", 0.6, 0)], skip_bad=True),  # --skip-bad-images did not skip it
        _images([("float-tiff", "PNG", 0.5, 0), ("16-bit-grey-png", "PNG", 0.5, 1)]),  # float clipped silently
    ],
    "text-files": [
        _texts("csv", ["unquoted-comma"]),  # trained on a label that was half a text
        _texts("csv", ["very-long-line"]),  # csv.Error traceback: field larger than field limit
        _texts("jsonl", ["non-object-json"]),  # AttributeError traceback
        _texts("csv", ["missing-label"]),  # a class named "None"
        _texts("jsonl", ["line-separator"]),  # a U+2028 inside a JSON string split the line
    ],
    "label-names": [
        {"names": ["cat", "Cat", "dog"], "source": "image-folders"},  # two classes
        {"names": ["café", unicodedata.normalize("NFD", "café")], "source": "text-csv"},  # two look-alike classes
        {"names": [" cat", "cat", "dog"], "source": "image-manifest"},  # one class after trimming
        {"names": ["new\nline", "ok"], "source": "text-csv"},  # a label with a newline
        {"names": [".hidden", "a", "b"], "source": "image-folders"},  # a hidden folder is not a class
    ],
}


def run_category(name: str, assets: Assets, examples: int, *, derandomize: bool, seed_: int | None = None,
                 check: bool = False, explicit: bool = True) -> list[Outcome]:
    """Run the category's explicit cases and ``examples`` generated ones; returns every outcome. With ``check``, the
    first unacceptable or unexpected outcome fails (hypothesis then shrinks it to a minimal case)."""
    strategy, build = CATEGORIES[name]
    outcomes: list[Outcome] = []

    @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(spec=strategy)
    def body(spec: dict[str, Any]) -> None:
        folder = Path(tempfile.mkdtemp(prefix=f"malformed-{name}-", dir=assets.root))
        try:
            outcome = build(spec, assets, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        outcomes.append(outcome)
        if check:
            assert outcome.acceptable, f"{outcome.kind}: {outcome.case} -> {outcome.detail}"
            assert outcome.as_expected, (f"expected {outcome.expected}, got {outcome.kind}: {outcome.case} -> "
                                         f"{outcome.detail}")

    for spec in reversed(EXPLICIT[name] if explicit else []):
        body = example(spec=spec)(body)
    if seed_ is not None and not derandomize:
        body = seed(seed_)(body)
    body()
    return outcomes


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for category in CATEGORIES:
        mine = [o for o in outcomes if o.category == category]
        table[category] = {
            "cases": len(mine), **Counter(o.kind for o in mine),
            "unexpected": sum(not o.as_expected for o in mine),
            "predictions": dict(Counter(p for o in mine for p in o.predictions)),
        }
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60, help="generated cases per category [60]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--out", type=Path, default=None, help="JSON [benchmarks/results/malformed_inputs.json]")
    args = parser.parse_args(argv)
    import torch
    from common import RESULTS, machine

    torch.set_num_threads(1)
    logging.getLogger("transferkit").setLevel(logging.WARNING)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="malformed-"))
    outcomes: list[Outcome] = []
    try:
        assets = Assets(root)
        for name in args.categories.split(","):
            mine = run_category(name, assets, args.examples, derandomize=False, seed_=args.seed)
            outcomes += mine
            bad = [o for o in mine if not o.acceptable or not o.as_expected]
            print(f"{name:<14} {len(mine):4d} cases: {dict(Counter(o.kind for o in mine))}, "
                  f"{len(bad)} not acceptable or unexpected", flush=True)
            for o in bad[:20]:
                print(f"    {o.kind:<12} (expected {o.expected}) {o.case} -> {o.detail}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = summarise(outcomes)
    print(f"\n{'category':<14} {'cases':>5} {'trained':>7} {'error':>5} {'traceback':>9} {'hang':>4} "
          f"{'half-written':>12} {'bad-exit':>8} {'unexpected':>10}  predict")
    for name, row in summary.items():
        if row["cases"]:
            print(f"{name:<14} {row['cases']:5d} {row.get('trained', 0):7d} {row.get('error', 0):5d} "
                  f"{row.get('traceback', 0):9d} {row.get('hang', 0):4d} {row.get('half-written', 0):12d} "
                  f"{row.get('bad-exit', 0):8d} {row['unexpected']:10d}  {row['predictions'] or ''}")
    result = {"benchmark": "malformed_inputs", "machine": machine(), "seed": args.seed, "examples": args.examples,
              "seconds": round(time.perf_counter() - started, 1), "summary": summary,
              "cases": [asdict(o) for o in outcomes]}
    out = args.out or RESULTS / "malformed_inputs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {out} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
