"""CSV and text files written by people and spreadsheets: encodings, byte-order marks, separators.

Rules, the same for every CSV softloc reads (places.csv, a drive's CSV, regions, MSLS, INS):

- UTF-8, with or without a byte-order mark (BOM). UTF-16 and UTF-32 are read when the file
  starts with their BOM (spreadsheets write one). Any other encoding (Latin-1, Windows-1252,
  UTF-16 without a BOM) is refused with the file, the line and the fix: save it as UTF-8.
- Spaces around names and values are ignored (``x, y`` works); blank lines are skipped.
- The separator is a comma. A header that holds no comma but a ``;`` or a tab gets a hint in
  the error of the caller (:func:`separator_hint`); it is not guessed, since files written with
  ``;`` usually write decimal commas too.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
SAVE_AS_UTF8 = ("save it as UTF-8 (in a spreadsheet: Save As, CSV, character set UTF-8; or "
                "`iconv -f latin1 -t utf-8 FILE > NEW`)")


def read_text_file(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> str:
    """The text of ``path`` decoded by the rules above.

    Raises:
        error: the file cannot be decoded; the message names it, the line and the fix.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as problem:
        raise error(f"{path}: cannot read ({problem.strerror or problem}); check that the file "
                    "exists and that you may read it") from None
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as problem:
                raise error(f"{path}: starts with a {encoding.upper()} byte-order mark but "
                            f"does not decode as {encoding.upper()} ({problem.reason}); "
                            f"{SAVE_AS_UTF8}") from None
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise error(f"{path}, line {line}: holds NUL bytes, so it is not UTF-8 text (UTF-16 "
                    f"without a byte-order mark, or a binary file); {SAVE_AS_UTF8}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as problem:
        line = data[: problem.start].count(b"\n") + 1
        byte = data[problem.start: problem.start + 1].hex()
        raise error(f"{path}, line {line}: byte 0x{byte} is not UTF-8 (the file is probably "
                    f"Latin-1 or Windows-1252); {SAVE_AS_UTF8}") from None


@dataclass(frozen=True)
class CsvText:
    """The rows of a CSV file, by line.

    Attributes:
        path: the file.
        header: column names, stripped (lower-cased when asked).
        rows: values per row, stripped, padded with '' to the header's length.
        lines: the file's line number of each row (the header is line 1).
        raw_header: the first line as written, for error messages.
    """

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]
    raw_header: str

    def dicts(self) -> list[dict[str, str]]:
        """Rows as ``{column: value}`` (a repeated column name keeps its first value)."""
        names = list(self.header)
        out = []
        for row in self.rows:
            record: dict[str, str] = {}
            for name, value in zip(names, row, strict=False):
                record.setdefault(name, value)
            out.append(record)
        return out

    def separator_hint(self) -> str:
        """``'; ...'`` advice when the header is separated by ';' or tabs, else ''."""
        return separator_hint(self.raw_header)


def separator_hint(raw_header: str) -> str:
    """``'; ...'`` advice when a header line is separated by ';' or tabs instead of commas."""
    if "," in raw_header:
        return ""
    for separator, name in ((";", "semicolons"), ("\t", "tabs")):
        if separator in raw_header:
            return (f"; the columns are separated by {name}: save the file with commas as the "
                    "separator and '.' as the decimal point")
    return ""


@dataclass(frozen=True)
class CsvStream:
    """The header of a CSV file and an iterator over its rows, read one at a time.

    For tables too long to hold as Python lists (a map's places of 10 M rows): the rows are
    parsed as they are consumed, so only the decoded text and the caller's own arrays stay in
    memory. The rows follow the rules of :func:`read_csv_text`.

    Attributes:
        path, header, raw_header: as :class:`CsvText`.
        records: ``(line, values)`` per row, values stripped and padded to the header's length;
            iterating raises the reader's ``error`` at a malformed line.
    """

    path: Path
    header: list[str]
    raw_header: str
    records: Iterator[tuple[int, list[str]]]

    def separator_hint(self) -> str:
        """As :meth:`CsvText.separator_hint`."""
        return separator_hint(self.raw_header)


#: One line of text with its ending (``\n``, ``\r\n`` or a lone ``\r``, as universal
#: newlines split them), matched lazily so the text is never copied into a list of lines.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def stream_csv_text(
    path: str | os.PathLike[str], error: type[Exception] = ValueError, lower_header: bool = False
) -> CsvStream:
    """Read a comma-separated file by the rules above, row by row (see :class:`CsvStream`).

    Raises:
        error: missing file, undecodable text, or malformed CSV in the header's part (file and
            line named); a malformed later line raises while ``records`` is iterated.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    text = read_text_file(path, error)
    raw_header = text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    reader = csv.reader((m.group() for m in _LINE.finditer(text)), skipinitialspace=True)
    rows = _non_blank_rows(reader, path, error)
    first = next(rows, None)  # the header: its malformed CSV raises here, not later
    header = [] if first is None else first[1]
    if lower_header:
        header = [v.lower() for v in header]
    width = len(header)
    records = ((line, values + [""] * (width - len(values))) for line, values in rows)
    return CsvStream(path, header, raw_header, records)


def _non_blank_rows(
    reader, path: Path, error: type[Exception]
) -> Iterator[tuple[int, list[str]]]:
    """``(line, stripped values)`` of every row that is not blank (no cell but spaces)."""
    try:
        for record in reader:
            values = [cell.strip() for cell in record]
            if any(values):
                yield reader.line_num, values
    except csv.Error as problem:
        raise error(f"{path}, line {reader.line_num}: not valid CSV ({problem}); check the "
                    "quotes on that line") from None


def read_csv_text(
    path: str | os.PathLike[str], error: type[Exception] = ValueError, lower_header: bool = False
) -> CsvText:
    """Read a comma-separated file by the rules above.

    Raises:
        error: missing file, undecodable text or malformed CSV (file and line named).
    """
    stream = stream_csv_text(path, error, lower_header)
    rows: list[list[str]] = []
    lines: list[int] = []
    for line, values in stream.records:
        rows.append(values)
        lines.append(line)
    return CsvText(stream.path, stream.header, rows, lines, stream.raw_header)
