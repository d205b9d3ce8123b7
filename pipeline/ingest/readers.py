"""Readers: a source (file, save_to_disk folder, Hugging Face split) as a stream of raw records.

A reader never parses preference formats; it yields `RawRecord`s in batches, each with its row index
in the source, the decoded value (or a per-record error such as a malformed JSON line) and the raw
text for rejections. Per-record problems become rejections downstream; a file that cannot be read at
all raises `IngestError` (or `NotPreferenceData`) with a message naming the file.

Every byte a reader consumes comes through a `HashingReader`, so the digest of what was read is
known when the last record has been yielded; `iter_records` compares it with the `sha256` the source
was identified by and raises `SourceChanged` if the file changed in between (the rows and the digest
recorded with them would disagree otherwise).

Row index: zero-based line number for JSONL (blank lines are not records but still count as lines),
element index for JSON arrays, data row index for CSV, Parquet, Arrow and Hugging Face splits.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import re
import sys
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.identity import file_sha256, stable_hash, tree_sha256

BOM = b"\xef\xbb\xbf"
DATA_SUFFIXES = (".jsonl.gz", ".json.gz", ".ndjson", ".jsonl", ".json", ".parquet", ".csv", ".arrow")
HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
DEFAULT_MAX_FIELD_CHARS = 100_000
# Deepest nesting of objects/lists a JSON record may have. Python's parser gives up (RecursionError)
# somewhere near 1,000 levels depending on how deep the caller's stack already is; a fixed, much
# lower bound makes the outcome the same everywhere. Real preference records nest under 10 levels.
MAX_DEPTH = 100
_CHUNK = 1 << 20
# Parquet and Arrow IPC files are read by seeking (footer first); their bytes are copied through
# the hashing reader into a private snapshot, held in memory up to this size and on disk beyond.
SNAPSHOT_IN_MEMORY = 64 << 20
READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException, csv.Error)


class IngestError(ValueError):
    """A source that cannot be read at all (truncated gzip, invalid JSON file, empty file, ...)."""


class NotPreferenceData(IngestError):
    """A readable file that holds no preference records (unknown extension, a JSON object, no
    detectable format). Skipped with a note when it is found inside a folder; an error when named."""


class SourceChanged(IngestError):
    """The bytes read are not the file version the ingest was identified by: it changed meanwhile."""


class DuplicateKey(ValueError):
    """A JSON object that names the same key twice (the standard parser would keep only the last)."""


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
    except (TypeError, ValueError, RecursionError):  # circular, nested too deep, a huge integer
        pass
    try:
        return repr(value)  # still useful to a human
    except (ValueError, RecursionError):
        return f"<{type(value).__name__} that cannot be shown as text>"


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
    """Data files and dataset folders under `folder` (sorted), and the entries skipped with why.

    Links are followed, but each file or folder is listed once, by its resolved path (the first name
    in sorted order wins), and a link that loops or points nowhere is skipped with a note: a folder
    holding such links still ingests, and a link to an ancestor folder cannot recurse forever.
    """
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    _walk(folder, found, skipped, {folder.resolve(): folder})
    return found, skipped


def _walk(folder: Path, found: list[Path], skipped: list[tuple[Path, str]], seen: dict[Path, Path]) -> None:
    if (folder / "state.json").is_file():
        found.append(folder)
        return
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        found.extend(folder / split for split in splits)
        return
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue  # hidden files, .tmp- leftovers of killed writers, .git
        try:
            target = child.resolve(strict=True)
        except (OSError, RuntimeError):  # Python 3.11 raises RuntimeError for a link loop
            skipped.append((child, "a link that loops or points nowhere"))
            continue
        if target in seen:
            skipped.append((child, f"the same {'folder' if target.is_dir() else 'file'} as {seen[target]}"))
            continue
        seen[target] = child
        if target.is_dir():
            _walk(child, found, skipped, seen)
        elif data_suffix(child) is None:
            skipped.append((child, "not a data file type"))
        else:
            found.append(child)


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


# --- hashing -------------------------------------------------------------------------------------


class HashingReader(io.RawIOBase):
    """A binary stream over `raw` that hashes every byte it hands out, in order. Whatever a reader
    consumes through it (directly, through gzip, a text decoder or a snapshot copy) is hashed."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer)
        if count:
            self._digest.update(memoryview(buffer)[:count])
        return count

    def hexdigest_to_end(self) -> str:
        """The digest of the whole file: the bytes handed out plus any the reader left unread
        (trailing bytes that produced no record still belong to the file version)."""
        while chunk := self._raw.read(_CHUNK):
            self._digest.update(chunk)
        return self._digest.hexdigest()


def _check_unchanged(source: Source, digest: str) -> None:
    if digest != source.sha256:
        raise SourceChanged(
            f"{source.describe()}: changed while it was read (sha256 {source.sha256[:12]}... when "
            f"identified, {digest[:12]}... as read); nothing was written for it; ingest it again "
            "once nothing is writing to it"
        )


# --- reading -------------------------------------------------------------------------------------


def iter_records(source: Source, max_field_chars: int = DEFAULT_MAX_FIELD_CHARS) -> Iterator[RawRecord]:
    """Every raw record of a source, in order. Raises IngestError naming the file when it cannot be
    read, and SourceChanged when the bytes read are not the version `source.sha256` names (checked
    once the last record has been read; a reader stopped early, as detection does, is not checked)."""
    try:
        if source.kind == "hf_hub":
            yield from _arrow_records(source.hf_split.data.to_batches(), source.describe())
        elif source.kind == "hf_disk":
            yield from _read_hf_disk(source)
        else:
            yield from _read_file(source, max_field_chars)
    except READ_ERRORS as error:
        raise IngestError(f"{source.describe()}: cannot read ({type(error).__name__}: {error})") from error


def _read_file(source: Source, max_field_chars: int) -> Iterator[RawRecord]:
    with open(source.path, "rb") as raw:
        hashed = HashingReader(raw)
        stream: BinaryIO = io.BufferedReader(hashed, _CHUNK)
        if source.path.name.lower().endswith(".gz"):
            stream = gzip.GzipFile(fileobj=stream, mode="rb")
        where = source.describe()
        try:
            if source.kind == "jsonl":
                yield from _jsonl_lines(stream)
            elif source.kind == "json":
                yield from _read_json(stream.read(), where)
            elif source.kind == "csv":
                yield from _read_csv(stream, where, max_field_chars)
            elif source.kind == "parquet":
                yield from _read_parquet(stream, where)
            else:
                yield from _read_arrow(stream, where)
        except READ_ERRORS:
            # A file cut short while being read looks like a corrupt one: say which it is.
            _check_unchanged(source, hashed.hexdigest_to_end())
            raise
        _check_unchanged(source, hashed.hexdigest_to_end())


# --- JSON ----------------------------------------------------------------------------------------


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        key, count = Counter(key for key, _ in pairs).most_common(1)[0]
        raise DuplicateKey(f"key {key!r} appears {count} times in one object")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_object)
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _too_deep(value: Any) -> bool:
    """Whether `value` nests objects/lists more than MAX_DEPTH levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _decode_problem(error: BaseException, where: str) -> tuple[str, str]:
    """(reason, detail) for a record the JSON parser refused."""
    if isinstance(error, RecursionError):
        return ("too_deep", f"{where}: nested too deep for the JSON parser (limit {MAX_DEPTH} levels)")
    if isinstance(error, DuplicateKey):
        return ("duplicate_key", f"{where}: {error} (which one is meant is unknown)")
    if isinstance(error, json.JSONDecodeError):
        return ("malformed_json", f"{where}: {error}")
    return ("bad_number", f"{where}: {error}")  # Python's 4,300-digit limit on integers


def _decoded(text: str, row: int, where: str) -> RawRecord:
    """One JSON record, or its rejection: malformed, too deep, a duplicate key, a number too long."""
    try:
        value = _DECODER.decode(text)
    except (RecursionError, ValueError) as error:
        return RawRecord(row, None, text, _decode_problem(error, where))
    # Counting brackets is cheap and bounds the depth, so only records that could be deep are walked.
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(value):
        return RawRecord(row, None, text, ("too_deep", f"{where}: nested more than {MAX_DEPTH} levels"))
    return RawRecord(row, value, text)


def _jsonl_lines(handle: BinaryIO) -> Iterator[RawRecord]:
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
        yield _decoded(text, line_number, f"line {line_number + 1}")


def _read_json(data: bytes, where: str) -> Iterator[RawRecord]:
    # A JSON array is parsed whole (the standard library has no streaming parser); large data belongs
    # in JSONL, which streams. A `.json` file holding JSON lines is read as JSONL.
    text = _json_text(data, where)
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several top-level values: JSON lines in a .json file
            yield from _jsonl_lines(io.BytesIO(data))
            return
        raise IngestError(f"{where}: not valid JSON ({error})") from None
    except (RecursionError, ValueError):
        # One element is too deep, holds a duplicate key or a number too long: decode the elements
        # one by one so that element alone is rejected. Not an array: lines, one record each.
        if text.lstrip(" \t\n\r").startswith("["):
            yield from _array_elements(text, where)
        else:
            yield from _jsonl_lines(io.BytesIO(data))
        return
    if not isinstance(value, list):
        kind = "object" if isinstance(value, dict) else type(value).__name__
        raise NotPreferenceData(f"{where}: a JSON {kind}, not an array of records")
    for index, element in enumerate(value):
        if _too_deep(element):
            problem = ("too_deep", f"element {index}: nested more than {MAX_DEPTH} levels")
            yield RawRecord(index, None, to_text(element), problem)
        else:
            yield RawRecord(index, element, to_text(element))


def _json_text(data: bytes, where: str) -> str:
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise IngestError(f"{where}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
    if not text.strip():
        raise NotPreferenceData(f"{where}: empty file")
    return text


# A JSON token: a string (escapes included), a run of opening or of closing brackets, a comma, a
# colon, or a run of other characters (numbers, true/false/null). Enough to find where a value the
# parser refused ends; runs keep a value nested a million deep to a few tokens.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]+|[\]}]+|[,:]|[^\s\[\]{},:"]+', re.S)


def _value_end(text: str, start: int, where: str) -> int:
    """The index just past the JSON value that starts at `start`, by matching brackets."""
    depth, position = 0, start
    while position < len(text):
        position = _WHITESPACE.match(text, position).end()
        match = _TOKEN.match(text, position)
        if match is None:
            break
        position = match.end()
        token = match.group()
        if token[0] in "[{":
            depth += len(token)
        elif token[0] in "]}":
            if len(token) >= depth:  # this run closes the value (and maybe what encloses it)
                return match.start() + max(depth, 1)
            depth -= len(token)
        if depth <= 0:
            return position
    raise IngestError(f"{where}: not valid JSON (a value starting at character {start} never ends)")


def _array_elements(text: str, where: str) -> Iterator[RawRecord]:
    """Elements of a JSON array decoded one at a time, each problem element a rejection."""
    position = _WHITESPACE.match(text, text.index("[") + 1).end()
    if text.startswith("]", position):
        return
    index = 0
    while True:
        end = _value_end(text, position, where)
        record = _decoded(text[position:end], index, f"element {index}")
        if record.error is not None and record.error[0] == "malformed_json":
            raise IngestError(f"{where}: not valid JSON ({record.error[1]})")  # as for the whole file
        yield record
        position = _WHITESPACE.match(text, end).end()
        if text.startswith(",", position):
            position = _WHITESPACE.match(text, position + 1).end()
            index += 1
            continue
        if text.startswith("]", position) and not text[position + 1 :].strip(" \t\n\r"):
            return
        raise IngestError(f"{where}: not valid JSON (expected ',' or ']' at character {position})")


# --- Parquet, Arrow ------------------------------------------------------------------------------


def _arrow_records(batches: Iterator[pa.RecordBatch], where: str, start: int = 0) -> Iterator[RawRecord]:
    row = start
    for batch in batches:
        _check_unique_columns(batch.schema.names, where)
        for value in batch.to_pylist():
            yield RawRecord(row, value, to_text(value))
            row += 1


def _check_unique_columns(names: list[str], where: str) -> None:
    # A record is a mapping: of two columns with one name only the last would survive, silently.
    # Unnamed columns (a spreadsheet's trailing commas) cannot be mapped or read, so may repeat.
    repeated = [(name, count) for name, count in Counter(names).items() if count > 1 and name != ""]
    if repeated:
        name, count = repeated[0]
        raise IngestError(f"{where}: column {name!r} appears {count} times; rename one so neither is lost")


@contextlib.contextmanager
def _snapshot(stream: BinaryIO) -> Iterator[BinaryIO]:
    """The rest of `stream` as a private seekable copy: the bytes parsed are exactly those hashed,
    whatever happens to the file meanwhile."""
    with tempfile.SpooledTemporaryFile(max_size=SNAPSHOT_IN_MEMORY) as copy:
        while chunk := stream.read(_CHUNK):
            copy.write(chunk)
        copy.seek(0)
        yield copy


def _read_parquet(stream: BinaryIO, where: str) -> Iterator[RawRecord]:
    with _snapshot(stream) as copy:
        parquet = pq.ParquetFile(copy)
        yield from _arrow_records(parquet.iter_batches(batch_size=2048), where)


def _arrow_batches(stream: io.BufferedReader) -> Iterator[pa.RecordBatch]:
    # `datasets` writes the IPC *stream* format, read straight from the stream; other tools write
    # the IPC *file* format, whose footer comes first, so it is read from a snapshot.
    if stream.peek(6)[:6] == b"ARROW1":
        with _snapshot(stream) as copy:
            reader = pa.ipc.open_file(copy)
            for index in range(reader.num_record_batches):
                yield reader.get_batch(index)
    else:
        yield from pa.ipc.open_stream(stream)


def _read_arrow(stream: io.BufferedReader, where: str) -> Iterator[RawRecord]:
    yield from _arrow_records(_arrow_batches(stream), where)


def _read_hf_disk(source: Source) -> Iterator[RawRecord]:
    # Read the Arrow files listed in state.json directly: no `datasets` import, same rows in order.
    # The folder's digest is rebuilt from the digests of the bytes read (state.json, data files).
    state_path = source.path / "state.json"
    state_bytes = state_path.read_bytes()
    known = {state_path: hashlib.sha256(state_bytes).hexdigest()}
    files = [source.path / entry["filename"] for entry in json.loads(state_bytes).get("_data_files", [])]
    if not files:
        raise IngestError(f"{source.path}: state.json lists no data files")
    row = 0
    for path in files:
        with open(path, "rb") as raw:
            hashed = HashingReader(raw)
            for record in _arrow_records(_arrow_batches(io.BufferedReader(hashed, _CHUNK)), str(path), row):
                row += 1
                yield record
            known[path] = hashed.hexdigest_to_end()
    _check_unchanged(source, tree_sha256(source.path, known))


# --- CSV -----------------------------------------------------------------------------------------


class _LineTap:
    """The text lines a csv reader consumes, noted per record: the start of the record (for a
    rejection's raw text) and whether a quoted field is still open (to skip a record whole)."""

    def __init__(self, lines: Iterator[str], keep_chars: int = 4_096):
        self._lines = lines
        self._keep = keep_chars
        self.raw = ""
        self._quotes = 0

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        if len(self.raw) < self._keep:
            self.raw += line[: self._keep - len(self.raw)]
        self._quotes += line.count('"')
        return line

    def start_record(self) -> None:
        self.raw, self._quotes = "", 0

    def skip_rest_of_record(self) -> None:
        """After the csv module gave up on a record mid-line: an odd number of quotes so far means a
        quoted field is open, so the record goes on over the following lines; skip them too."""
        while self._quotes % 2:
            if next(self, None) is None:
                return


def _read_csv(binary: BinaryIO, where: str, max_field_chars: int) -> Iterator[RawRecord]:
    # Undecodable bytes survive as surrogates so the bad row (not the file) is rejected; newline=""
    # keeps CRLF inside quoted fields exactly as written. The csv module's field limit is raised to
    # --max-field-chars (it is process-wide, so never lowered); a longer field is a row rejection.
    csv.field_size_limit(max(csv.field_size_limit(), min(max_field_chars, sys.maxsize)))  # a C long
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
    tap = _LineTap(text)
    reader = csv.reader(tap)
    header = next(reader, None)
    if header is None:
        raise NotPreferenceData(f"{where}: empty CSV file")
    _check_unique_columns(header, where)
    index = 0
    while True:
        tap.start_record()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            tap.skip_rest_of_record()
            yield RawRecord(index, None, _safe(tap.raw), _csv_problem(error, index, max_field_chars))
            index += 1
            continue
        if cells:  # a blank line is not a record
            yield _csv_record(index, header, cells)
            index += 1


def _csv_problem(error: csv.Error, index: int, max_field_chars: int) -> tuple[str, str]:
    if "field limit" in str(error):
        return (
            "field_too_large",
            f"CSV row {index}: a field over the limit of {max_field_chars:,} characters",
        )
    return ("malformed_json", f"CSV row {index}: {error}")


def _csv_record(index: int, header: list[str], cells: list[str]) -> RawRecord:
    row: dict[Any, Any] = dict(zip(header, cells, strict=False))
    row.update((name, None) for name in header[len(cells) :])  # fewer cells than columns: missing
    if len(cells) > len(header):
        row[None] = cells[len(header) :]
    raw = _safe(to_text(row))
    if any(_has_surrogates(v) for v in cells):
        return RawRecord(index, None, raw, ("invalid_utf8", f"CSV row {index}: bytes that are not UTF-8"))
    if len(cells) > len(header):
        return RawRecord(index, None, raw, ("malformed_json", f"CSV row {index}: more cells than columns"))
    return RawRecord(index, row, raw)


def _safe(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
