"""The malformed-input campaign, small and deterministic: CSV manifests, images, text files and label names, each
case trained through the CLI, must end in a trained run or one ``error:`` line with exit code 2 — never a traceback,
a hang or a half-written folder — and in the outcome the documented rules call for. The explicit cases of
``benchmarks/malformed_inputs.py`` (each failed before its fix) run first, then a few generated ones
(``derandomize=True``: the same cases every run). ``python benchmarks/malformed_inputs.py`` is the large version."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
GENERATED = 3  # generated cases per category, on top of the explicit ones


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import malformed_inputs
    finally:
        sys.path.remove(str(BENCHMARKS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster than two fighting over a busy machine
    yield malformed_inputs, malformed_inputs.Assets(tmp_path_factory.mktemp("malformed"))
    torch.set_num_threads(threads)


@pytest.mark.parametrize("category", ["csv-manifests", "images", "text-files", "label-names"])
def test_every_malformed_input_ends_in_a_run_or_one_error_line(campaign, category):
    module, assets = campaign
    outcomes = module.run_category(category, assets, GENERATED, derandomize=True, check=True)
    assert len(outcomes) == len(module.EXPLICIT[category]) + GENERATED
    kinds = {o.kind for o in outcomes}
    assert kinds <= {"trained", "error"} and "error" in kinds and "trained" in kinds


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    """PIL's own conversion clipped every 16-bit value above 255 to white: a 16-bit photo trained as a white square
    (and serve read it the same way)."""
    from transferkit.data.images import open_image
    from transferkit.serve import _decode_image

    grey = np.linspace(0, 255, 64 * 48, dtype=np.float64).reshape(48, 64).round().astype(np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(grey * 257).save(path)  # 0..65535
    assert Image.open(path).mode == "I;16"
    pixels = np.asarray(open_image(path))
    assert pixels.shape == (48, 64, 3) and np.array_equal(pixels[..., 0], grey.astype(np.uint8))
    assert np.array_equal(np.asarray(_decode_image(path.read_bytes(), 0, 10**7)), pixels)  # serve reads the same


def test_exif_orientation_is_not_applied_anywhere(tmp_path):
    """The decision: pixels as stored, in training, predict and serve alike (as timm and torchvision read images)."""
    from transferkit.data.images import open_image
    from transferkit.serve import _decode_image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(buffer, "JPEG", exif=exif.tobytes())
    path = tmp_path / "rotated.jpg"
    path.write_bytes(buffer.getvalue())
    assert open_image(path).size == (40, 20) and _decode_image(buffer.getvalue(), 0, 10**7).size == (40, 20)


def test_an_image_above_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    """PIL only warns below twice its limit and raises DecompressionBombError (not caught: a traceback) above it."""
    from transferkit.data import images
    from transferkit.errors import TransferKitError

    path = tmp_path / "big.png"
    Image.new("L", (200, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 20,000 pixels: over the limit, under PIL's 2x error
    with pytest.raises(TransferKitError, match=r"big.png: too large \(200 x 100 = 20,000 pixels; the limit .* is "
                                               r"10,000 pixels\). Fix: downscale it"):
        images.open_image(path)
    assert "too large" in images.image_problem(path)


def test_tables_read_excel_unicode_text_and_refuse_shifted_rows(tmp_path):
    """UTF-16 with its BOM, CR line ends, blank rows and spaced column names are read; a row with more values than
    the header (an unquoted comma) is an error naming its line instead of silently shifting the values."""
    from transferkit.data.tables import read_table
    from transferkit.errors import TransferKitError

    path = tmp_path / "m.tsv"
    path.write_bytes("\ufeff Path \t Label \r\ra.png\tcafé\r\r".encode("utf-16-le"))
    assert read_table(path, lower_header=True) == (["path", "label"], [(3, {"path": "a.png", "label": "café"})])
    shifted = tmp_path / "s.csv"
    shifted.write_text("text,label\n\"fine\",pos\na good film, really,pos\n", encoding="utf-8")
    with pytest.raises(TransferKitError, match=r"s.csv, line 3: 3 values but the header has 2 .* unquoted comma"):
        read_table(shifted)


def test_labels_are_checked_the_same_way_everywhere():
    """A newline (an unclosed quote) or an empty label is an error; labels differing only in case or Unicode form
    are an error naming both (they were two classes)."""
    import unicodedata

    from transferkit.data.tables import check_label_names, clean_label
    from transferkit.errors import TransferKitError

    assert clean_label("  cat ", "x") == "cat" and clean_label(1, "x") == "1"
    for bad in ("", "   ", "re\nd", None):
        with pytest.raises(TransferKitError, match="x: "):
            clean_label(bad, "x")
    with pytest.raises(TransferKitError, match="'Cat' and 'cat' .* differ only in letter case"):
        check_label_names(["Cat", "cat", "dog"], "data")
    with pytest.raises(TransferKitError, match="differ only"):
        check_label_names(["caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")], "data")
    check_label_names(["cat", "dog", "猫"], "data")


def test_the_decoded_cache_reports_an_unreadable_header_in_the_house_format(tmp_path):
    """PIL's DecompressionBombError is not an OSError: it escaped the decoded cache's size pass as a traceback."""
    from transferkit.data.decoded import source_size
    from transferkit.errors import TransferKitError

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from malformed_inputs import huge_png_header
    finally:
        sys.path.remove(str(BENCHMARKS))
    path = tmp_path / "bomb.png"
    path.write_bytes(huge_png_header(60_000, 50_000))
    with pytest.raises(TransferKitError, match="bomb.png: too large"):
        source_size(path)
