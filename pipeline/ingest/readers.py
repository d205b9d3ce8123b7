"""Readers: a source (file, save_to_disk folder, Hugging Face split) as a stream of raw records.

A reader never parses preference formats; it yields `RawRecord`s in batches, each with its row index
in the source, the decoded value (or a per-record error such as a malformed JSON line) and the raw
text for rejections. Per-record problems become rejections downstream; a file that cannot be read at
all raises `IngestError` (or `NotPreferenceData`) with a message naming the file.

Row index: zero-based line number for JSONL (blank lines are not records but still count as lines),
element index for JSON arrays, data row index for CSV, Parquet, Arrow and Hugging Face splits.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.identity import file_sha256, stable_hash, tree_sha256

BOM = b"\xef\xbb\xbf"
DATA_SUFFIXES = (".jsonl.gz", ".json.gz", ".ndjson", ".jsonl", ".json", ".parquet", ".csv", ".arrow")
HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class IngestError(ValueError):
    """A source that cannot be read at all (truncated gzip, invalid JSON file, empty file, ...)."""


class NotPreferenceData(IngestError):
    """A readable file that holds no preference records (unknown extension, a JSON object, no
    detectable format). Skipped with a note when it is found inside a folder; an error when named."""


@dataclass(frozen=True)
class RawRecord:
    row: int
    value: Any  # the decoded record (None when `error` is set)
    raw: str  # the record as text, for the rejection's `raw` column (bounded by the runner)
    error: tuple[str, str] | None = None  # (reason, detail) when the record could not be decoded


@dataclass(frozen=True)
class Source:
    """One source file version to ingest: where it is, how to read it, and its identity."""

    uri: str
    kind: str  # jsonl, json, parquet, csv, arrow, hf_disk, hf_hub
    path: Path | None
    stem: str
    sha256: str
    size: int
    hf_split: Any = None  # a loaded datasets.Dataset for hf_hub sources

    def describe(self) -> str:
        return str(self.path) if self.path is not None else self.uri


def to_text(value: Any) -> str:
    """A record as one line of text for inspection (keys in source order, non-JSON values as str)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # e.g. circular structures; repr is still useful to a human
        return repr(value)


def data_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((suffix for suffix in DATA_SUFFIXES if name.endswith(suffix)), None)


def _kind_of(path: Path) -> str:
    suffix = data_suffix(path)
    if suffix is None:
        raise NotPreferenceData(
            f"{path}: unknown file type (expected one of {', '.join(DATA_SUFFIXES)} or a save_to_disk folder)"
        )
    return {
        ".jsonl.gz": "jsonl",
        ".ndjson": "jsonl",
        ".jsonl": "jsonl",
        ".json.gz": "json",
        ".json": "json",
        ".parquet": "parquet",
        ".csv": "csv",
        ".arrow": "arrow",
    }[suffix]


def _stem(path: Path) -> str:
    suffix = data_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def file_source(path: Path) -> Source:
    """A named file (or save_to_disk dataset folder) as a Source; raises naming the file if unusable."""
    path = path.resolve()
    if path.is_dir():
        if (path / "state.json").is_file():
            return Source(path.as_uri(), "hf_disk", path, path.name, tree_sha256(path), _tree_size(path))
        raise NotPreferenceData(f"{path}: a folder, not a save_to_disk dataset (no state.json)")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    kind = _kind_of(path)
    size = path.stat().st_size
    if size == 0:
        raise NotPreferenceData(f"{path}: empty file")
    return Source(path.as_uri(), kind, path, _stem(path), file_sha256(path), size)


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def expand_folder(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Data files and dataset folders under `folder` (sorted), and the files skipped with why."""
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    if (folder / "state.json").is_file():
        return [folder], skipped
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        return [folder / split for split in splits], skipped
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue  # hidden files, .tmp- leftovers of killed writers, .git
        if child.is_dir():
            sub_found, sub_skipped = expand_folder(child)
            found += sub_found
            skipped += sub_skipped
        elif data_suffix(child) is None:
            skipped.append((child, "not a data file type"))
        else:
            found.append(child)
    return found, skipped


def hub_sources(name: str) -> list[Source]:
    """A Hugging Face dataset name as one Source per split, through `datasets.load_dataset`."""
    import datasets  # heavy import, only for hub names

    try:
        loaded = datasets.load_dataset(name)
    except Exception as error:  # the hub client raises many types (offline, missing, gated, ...)
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise IngestError(
            f"{name}: cannot load Hugging Face dataset ({type(error).__name__}: {first_line})"
        ) from None
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("train", loaded)]
    sources = []
    for split, dataset in splits:
        # The fingerprint changes with the data files, so it stands in for the bytes' sha256.
        digest = stable_hash([name, split, dataset._fingerprint], length=64)
        uri = f"hf://{name}/{split}"
        sources.append(Source(uri, "hf_hub", None, f"{name.split('/')[-1]}-{split}", digest, 0, dataset))
    return sources


def looks_like_hub_name(text: str) -> bool:
    return bool(HF_NAME.match(text)) and data_suffix(Path(text)) is None


# --- reading -------------------------------------------------------------------------------------


def iter_records(source: Source) -> Iterator[RawRecord]:
    """Every raw record of a source, in order. Raises IngestError naming the file when it cannot be read."""
    readers = {
        "jsonl": _read_jsonl,
        "json": _read_json,
        "parquet": _read_parquet,
        "csv": _read_csv,
        "arrow": _read_arrow,
        "hf_disk": _read_hf_disk,
        "hf_hub": _read_hub,
    }
    try:
        yield from readers[source.kind](source)
    except (OSError, EOFError, zlib.error, pa.ArrowException, csv.Error) as error:
        raise IngestError(f"{source.describe()}: cannot read ({type(error).__name__}: {error})") from error


def _open_bytes(path: Path) -> io.BufferedIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_jsonl(source: Source) -> Iterator[RawRecord]:
    with _open_bytes(source.path) as handle:
        yield from _jsonl_lines(handle)


def _jsonl_lines(handle: io.BufferedIOBase) -> Iterator[RawRecord]:
    for line_number, line in enumerate(handle):
        if line_number == 0 and line.startswith(BOM):
            line = line[len(BOM) :]  # a BOM is an encoding marker, not data
        stripped = line.rstrip(b"\r\n")
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError as error:
            raw = stripped.decode("utf-8", "replace")
            yield RawRecord(
                line_number,
                None,
                raw,
                ("invalid_utf8", f"line {line_number + 1}: {error.reason} at byte {error.start}"),
            )
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except ValueError as error:
            yield RawRecord(line_number, None, text, ("malformed_json", f"line {line_number + 1}: {error}"))
            continue
        yield RawRecord(line_number, value, text)


def _read_json(source: Source) -> Iterator[RawRecord]:
    # A JSON array is parsed whole (the standard library has no streaming parser); large data belongs
    # in JSONL, which streams. A `.json` file holding JSON lines is read as JSONL.
    with _open_bytes(source.path) as handle:
        data = handle.read()
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise IngestError(f"{source.path}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
    if not text.strip():
        raise NotPreferenceData(f"{source.path}: empty file")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several top-level values: JSON lines in a .json file
            yield from _jsonl_lines(io.BytesIO(data))
            return
        raise IngestError(f"{source.path}: not valid JSON ({error})") from None
    if not isinstance(value, list):
        kind = "object" if isinstance(value, dict) else type(value).__name__
        raise NotPreferenceData(f"{source.path}: a JSON {kind}, not an array of records")
    for index, element in enumerate(value):
        yield RawRecord(index, element, to_text(element))


def _arrow_batches_to_records(batches: Iterator[pa.RecordBatch], start: int = 0) -> Iterator[RawRecord]:
    row = start
    for batch in batches:
        for value in batch.to_pylist():
            yield RawRecord(row, value, to_text(value))
            row += 1


def _read_parquet(source: Source) -> Iterator[RawRecord]:
    parquet = pq.ParquetFile(source.path)
    yield from _arrow_batches_to_records(parquet.iter_batches(batch_size=2048))


def _arrow_reader(path: Path) -> Iterator[pa.RecordBatch]:
    # `datasets` writes the IPC *stream* format; other tools write the IPC *file* format.
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
    except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as stream:
            yield from pa.ipc.open_stream(stream)


def _read_arrow(source: Source) -> Iterator[RawRecord]:
    yield from _arrow_batches_to_records(_arrow_reader(source.path))


def _read_hf_disk(source: Source) -> Iterator[RawRecord]:
    # Read the Arrow files listed in state.json directly: no `datasets` import, same rows in order.
    state = json.loads((source.path / "state.json").read_text(encoding="utf-8"))
    files = [source.path / entry["filename"] for entry in state.get("_data_files", [])]
    if not files:
        raise IngestError(f"{source.path}: state.json lists no data files")

    def batches() -> Iterator[pa.RecordBatch]:
        for path in files:
            yield from _arrow_reader(path)

    yield from _arrow_batches_to_records(batches())


def _read_hub(source: Source) -> Iterator[RawRecord]:
    yield from _arrow_batches_to_records(source.hf_split.data.to_batches())


def _read_csv(source: Source) -> Iterator[RawRecord]:
    # Undecodable bytes survive as surrogates so the bad row (not the file) is rejected; newline=""
    # keeps CRLF inside quoted fields exactly as written.
    with _open_bytes(source.path) as binary:
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.DictReader(text)
        if reader.fieldnames is None:
            raise NotPreferenceData(f"{source.path}: empty CSV file")
        for index, row in enumerate(reader):
            raw = to_text(row).encode("utf-8", "replace").decode("utf-8")
            if any(_has_surrogates(v) for v in row.values() if isinstance(v, str)):
                yield RawRecord(
                    index, None, raw, ("invalid_utf8", f"CSV row {index}: bytes that are not UTF-8")
                )
                continue
            if None in row:  # more cells than header names
                yield RawRecord(
                    index, None, raw, ("malformed_json", f"CSV row {index}: more cells than columns")
                )
                continue
            yield RawRecord(index, dict(row), raw)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
