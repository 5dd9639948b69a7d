"""Reading the user's text files and tables — CSV / TSV manifests and text datasets — with one set of rules, and
labels checked the same way for every data source.

- Encoding: UTF-8 with or without a BOM, or UTF-16 with its BOM (what Excel saves as "Unicode text"); anything
  else is an error naming the line and the fix.
- Line ends LF, CRLF or CR; a line break inside a quoted value stays part of the value (no other character
  splits rows: a Unicode line separator inside a text is text).
- Blank rows (nothing but separators and spaces) are skipped; spaces around column names are ignored.
- A row with more values than the header is an error naming the line (the usual cause: an unquoted comma inside a
  value), as is a row without a required value. Values of any length are read.
- Labels are kept as written after trimming surrounding spaces; an empty label or one with a control character (a
  newline from an unclosed quote, a NUL) is an error naming the line. Labels that differ only in letter case,
  Unicode normalisation or surrounding spaces are an error naming both (:func:`check_label_names`): they are
  almost always one class typed two ways, and merging them silently would hide that.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from ..errors import TransferKitError

_LINE_BREAKS = re.compile(rb"\r\n|\r|\n")


def read_text_file(path: Path) -> str:
    """The text of a UTF-8 file (a BOM is dropped), or of a UTF-16 file with its BOM."""
    data = Path(path).read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise TransferKitError(f"{path} starts like UTF-16 but is not valid UTF-16 (at byte {exc.start}). Fix: "
                                   "re-save it as UTF-8.") from exc
    data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(_LINE_BREAKS.findall(data[: exc.start])) + 1
        raise TransferKitError(f"{path} is not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}). Fix: re-save "
                               "it as UTF-8 (e.g. iconv -f latin1 -t utf-8 in.csv > out.csv).") from exc


def read_table(path: Path, *, lower_header: bool = False) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The columns and the rows of a CSV (or, by its suffix, TSV) file: ``(columns, [(line, {column: value})])``.

    Args:
        lower_header: match column names case-insensitively (they are returned in lower case).

    A row with fewer values than columns gets empty strings for the missing ones (the caller decides whether they
    are required); more values than columns is an error naming the line.
    """
    path = Path(path)
    tab = path.suffix.lower() == ".tsv"
    content = read_text_file(path)
    reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t" if tab else ",")
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(content) + 1))  # a value may be as long as the file (a long document)
    try:
        records = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise TransferKitError(f"{path}, line {reader.line_num}: not valid {'TSV' if tab else 'CSV'} ({exc}). Fix: "
                               "check the quoting on that line.") from exc
    finally:
        csv.field_size_limit(limit)
    records = [(line, row) for line, row in records if any(cell.strip() for cell in row)]
    if not records:
        return [], []
    header = [c.strip().lower() if lower_header else c.strip() for c in records[0][1]]
    rows = []
    for line, row in records[1:]:
        if len(row) > len(header) and any(cell.strip() for cell in row[len(header):]):
            separator = "tab" if tab else "comma"
            raise TransferKitError(
                f"{path}, line {line}: {len(row)} values but the header has {len(header)} ({', '.join(header)}). "
                f"Likely cause: an unquoted {separator} inside a value. Fix: put values that contain {separator}s in "
                "double quotes, and give every row one value per column.")
        rows.append((line, {name: (row[i] if i < len(row) else "") for i, name in enumerate(header)}))
    return header, rows


def clean_label(value: object, where: str) -> str:
    """A label as written, without surrounding spaces; an empty one or one with a control character is an error
    (``where`` names the file and line)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TransferKitError(f"{where}: the label must be a string or a number. Got {value!r}. Fix: give every row "
                               "a label.")
    label = str(value).strip()
    if not label:
        raise TransferKitError(f"{where}: empty label. Fix: give every row a label, or remove the row.")
    bad = _control_character(label)
    if bad:
        raise TransferKitError(f"{where}: the label {label!r} contains the control character {bad!r} (a newline "
                               "usually comes from an unclosed quote). Fix: correct the label.")
    return label


def _control_character(text: str) -> str:
    return next((ch for ch in text if unicodedata.category(ch) == "Cc"), "")


def label_key(label: str) -> str:
    """What two spellings of one label share: Unicode-normalised (NFC), case-folded, without surrounding spaces."""
    return unicodedata.normalize("NFC", label.strip()).casefold()


def check_label_names(classes: Iterable[str], where: str) -> None:
    """Class names must differ by more than case, Unicode normalisation or surrounding spaces, and hold no control
    characters (a folder name can); otherwise one clear error naming them."""
    seen: dict[str, str] = {}
    for name in classes:
        bad = _control_character(name)
        if bad:
            raise TransferKitError(f"The class name {name!r} in {where} contains the control character {bad!r}. Fix: "
                                   "rename it (folder names and labels are the class names).")
        other = seen.setdefault(label_key(name), name)
        if other != name:
            same_look = unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", name)
            both = f"{ascii(other)} and {ascii(name)}" if same_look else f"{other!r} and {name!r}"
            raise TransferKitError(
                f"The labels {both} in {where} differ only in letter case, Unicode form or surrounding "
                "spaces; transferkit keeps labels as written, so they would be two classes. Fix: spell them the same "
                "way (or make them clearly different if they really are two classes).")
