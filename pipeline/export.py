"""Export a dataset version for the rest of the ecosystem: TRL's `DPOTrainer`, `datasets.load_dataset`, the Hub.

The kept pairs of a version (its `pairs.parquet`) are written in TRL's preference format, one of

- conversational (default): `prompt` the list of messages as dpop keeps it, `chosen` and `rejected` one
  assistant message each (`[{"role": "assistant", "content": …}]`): TRL applies the model's chat template;
- standard: `prompt`, `chosen`, `rejected` as text, the prompt rendered with the dataset's own tokenizer and
  chat template (the text dpop's shards were tokenised from),

plus `pair_id`, `source` and the scores as extra columns (TRL ignores them; `pair_id` leads back to the
source row with `dpop sql`). dpop's splits become `train` and `test` (the eval split: TRL's and the Hub's
name for held-out data, the default of TRL's scripts). Formats:

    trl      <out>/data/{train,test}-NNNNN-of-NNNNN.parquet + README.md   `load_dataset(out)`, the Hub layout
    parquet  <out>/{train,test}.parquet + README.md                       one file per split
    hf       <out>/ (DatasetDict.save_to_disk) + README.md                `load_from_disk(out)`

Every format gets a dataset card (`pipeline.cards.dataset_card`). The folder is written under a temporary
name and renamed when complete. Rows stream through in batches: memory stays bounded by `batch_rows`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.atomic import atomic_dir
from pipeline.cards import DatasetLineage, dataset_card, dataset_lineage
from pipeline.workspace import Workspace

FORMATS = ("trl", "parquet", "hf")
STYLES = ("conversational", "standard")
SPLIT_NAMES = {"train": "train", "eval": "test"}  # dpop's split -> the exported one
EXTRA_COLUMNS = (
    "pair_id",
    "source",
    "chosen_score",
    "rejected_score",
    "score_margin",
    "edit_distance",
    "edit_ratio",
)
ROWS_PER_FILE = 250_000  # trl format: Hub-sized files (a few hundred MB of text at most)
PUSHABLE = ("trl", "parquet")


class ExportError(ValueError):
    """A user error (unknown dataset, bad option, folder in the way): one line, no stack trace."""


class PushError(RuntimeError):
    """The Hub push failed (offline, no token, no access): one line; the export on disk is complete."""


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    dataset_id: str
    format: str
    style: str
    rows: dict[str, int]  # exported split -> rows
    files: tuple[Path, ...]
    card: Path
    licenses: tuple[str, ...]


def export_dataset(
    workspace: Workspace | str | os.PathLike[str],
    dataset_id: str,
    out: str | os.PathLike[str],
    fmt: str = "trl",
    style: str = "conversational",
    overwrite: bool = False,
    batch_rows: int = 8192,
    rows_per_file: int = ROWS_PER_FILE,
) -> ExportResult:
    """Write dataset version `dataset_id` (or a unique prefix of it) to `out` (see the module docstring)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    _check_choice("format", fmt, FORMATS)
    _check_choice("style", style, STYLES)
    dataset_id = resolve_dataset(ws, dataset_id)
    pairs_path = ws.dataset_dir(dataset_id) / "pairs.parquet"
    if not pairs_path.is_file():
        raise ExportError(f"dataset version {dataset_id} has no pairs.parquet in {pairs_path.parent}")
    out = Path(out).expanduser().resolve()
    _check_out(out, overwrite)
    lineage = dataset_lineage(ws, dataset_id)
    rows = _split_rows(pairs_path)
    if not rows:
        raise ExportError(f"dataset version {dataset_id} kept no pairs: nothing to export")
    convert = _converter(style, lineage, ws)
    sizes = dict.fromkeys(rows, 0)
    with atomic_dir(out) as tmp:
        writer = {"trl": _write_trl, "parquet": _write_parquet, "hf": _write_hf}[fmt]
        writer(tmp, _tables(pairs_path, batch_rows, convert, sizes), rows, rows_per_file)
        card = dataset_card(lineage, style, rows, sizes, _load_instructions(fmt))
        (tmp / "README.md").write_text(card, encoding="utf-8")
    files = tuple(sorted(p for p in out.rglob("*") if p.is_file()))
    return ExportResult(out, dataset_id, fmt, style, rows, files, out / "README.md", tuple(lineage.licenses))


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ExportError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")


def resolve_dataset(ws: Workspace, id_or_prefix: str) -> str:
    """The dataset version with this id, else the one whose id starts with it."""
    if (ws.dataset_dir(id_or_prefix) / "manifest.json").is_file():
        return id_or_prefix
    versions = (
        sorted(p.name for p in ws.datasets_dir.iterdir() if (p / "manifest.json").is_file())
        if ws.datasets_dir.is_dir()
        else []
    )
    matches = [name for name in versions if name.startswith(id_or_prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ExportError(
            f"no dataset version {id_or_prefix!r} in {ws.datasets_dir} "
            '(list them with: dpop sql "SELECT dataset_id, is_current FROM datasets")'
        )
    raise ExportError(
        f"{id_or_prefix!r} matches {len(matches)} dataset versions ({', '.join(matches[:4])}…); give more of it"
    )


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} is not empty; pass --overwrite to replace it")


def _split_rows(pairs_path: Path) -> dict[str, int]:
    counts = pl.scan_parquet(pairs_path).group_by("split").agg(pl.len()).collect()
    found = dict(zip(counts["split"].to_list(), counts["len"].to_list(), strict=True))
    return {SPLIT_NAMES[split]: found[split] for split in SPLIT_NAMES if found.get(split)}


# --- rows ---------------------------------------------------------------------------------------------------

Converter = Callable[[pa.RecordBatch], pa.Table]


def _converter(style: str, lineage: DatasetLineage, ws: Workspace) -> Converter:
    render = _prompt_renderer(ws, lineage.dataset_id) if style == "standard" else None

    def convert(batch: pa.RecordBatch) -> pa.Table:
        columns = {"prompt": batch.column("prompt")}
        if render is None:
            columns["chosen"] = assistant_messages(batch.column("chosen"))
            columns["rejected"] = assistant_messages(batch.column("rejected"))
        else:
            columns["prompt"] = pa.array(render(pl.from_arrow(batch.column("prompt"))), pa.string())
            columns["chosen"] = batch.column("chosen")
            columns["rejected"] = batch.column("rejected")
        for name in EXTRA_COLUMNS:
            if name in batch.schema.names:
                columns[name] = batch.column(name)
        return pa.table(columns)

    return convert


def assistant_messages(texts: pa.Array) -> pa.Array:
    """Each text as a one-message conversation `[{"role": "assistant", "content": text}]` (no copy of the
    texts: a list array over a struct array that holds them)."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    roles = pa.array(["assistant"] * len(texts), pa.string())
    messages = pa.StructArray.from_arrays([roles, texts], names=["role", "content"])
    offsets = pa.array(range(len(texts) + 1), pa.int32())
    return pa.ListArray.from_arrays(offsets, messages)


def _prompt_renderer(ws: Workspace, dataset_id: str) -> Callable[[pl.Series], list[str]]:
    """The dataset's own prompt rendering (its tokenizer's chat template, or dpop's plain one)."""
    from pipeline import manifest as manifest_module
    from pipeline.tokenize import PairTokenizer

    info = manifest_module.load(ws, dataset_id)
    path = info.tokenizer.path
    if not path or not Path(path).is_dir():
        raise ExportError(
            f"--style standard renders prompts with the dataset's tokenizer, and its folder {path} is gone; "
            "use --style conversational"
        )
    tokenizer = PairTokenizer(path, max_length=info.max_length or 1, max_prompt_length=1)
    return tokenizer.prompt_texts


def _tables(
    pairs_path: Path, batch_rows: int, convert: Converter, sizes: dict[str, int]
) -> Iterator[tuple[str, pa.Table]]:
    """(exported split, converted rows) of the kept pairs, in the file's order; `sizes` adds up each
    split's Arrow bytes (the card's `num_bytes`)."""
    wanted = ["prompt", "chosen", "rejected", "split", *EXTRA_COLUMNS]
    handle = pq.ParquetFile(pairs_path)
    columns = [name for name in wanted if name in handle.schema_arrow.names]
    for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
        for split, name in SPLIT_NAMES.items():
            part = batch.filter(pc.equal(batch.column("split"), split))
            if part.num_rows:
                table = convert(part)
                sizes[name] += table.nbytes
                yield name, table


# --- formats ------------------------------------------------------------------------------------------------


Tables = Iterator[tuple[str, pa.Table]]


def _write_trl(tmp: Path, tables: Tables, rows: dict[str, int], rows_per_file: int) -> None:
    """Hub layout: data/<split>-NNNNN-of-NNNNN.parquet, at most `rows_per_file` rows each (the split is
    in the file name, which is how `load_dataset(DIR)` and the Hub find it)."""
    (tmp / "data").mkdir()
    totals = {split: -(-count // rows_per_file) for split, count in rows.items()}
    writers: dict[str, _RollingWriter] = {
        split: _RollingWriter(tmp / "data", split, totals[split], rows_per_file) for split in rows
    }
    for split, table in tables:
        writers[split].write(table)
    for writer in writers.values():
        writer.close()


def _write_parquet(tmp: Path, tables: Tables, rows: dict[str, int], rows_per_file: int) -> None:
    """<split>.parquet, one file per split."""
    writers: dict[str, pq.ParquetWriter] = {}
    for split, table in tables:
        if split not in writers:
            writers[split] = pq.ParquetWriter(tmp / f"{split}.parquet", table.schema)
        writers[split].write_table(table)
    for writer in writers.values():
        writer.close()


def _write_hf(tmp: Path, tables: Tables, rows: dict[str, int], rows_per_file: int) -> None:
    """`DatasetDict.save_to_disk`, built from per-split Parquet files in a scratch folder (datasets turns
    them into memory-mapped Arrow there: the table never has to fit in memory)."""
    from datasets import Dataset, DatasetDict

    scratch = tmp / ".scratch"
    scratch.mkdir()
    _write_parquet(scratch, tables, rows, rows_per_file)
    splits = {
        split: Dataset.from_parquet(str(scratch / f"{split}.parquet"), cache_dir=str(scratch / "cache"))
        for split in rows
    }
    DatasetDict(splits).save_to_disk(str(tmp))
    del splits
    shutil.rmtree(scratch)


class _RollingWriter:
    """Parquet files of at most `rows_per_file` rows: <folder>/<split>-00000-of-0000N.parquet, …"""

    def __init__(self, folder: Path, split: str, total: int, rows_per_file: int):
        self.folder, self.split, self.total, self.limit = folder, split, total, rows_per_file
        self.index, self.rows, self.writer = 0, 0, None

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self.writer is None:
                name = f"{self.split}-{self.index:05d}-of-{self.total:05d}.parquet"
                self.writer = pq.ParquetWriter(self.folder / name, table.schema)
            room = self.limit - self.rows
            self.writer.write_table(table.slice(0, room))
            self.rows += min(room, table.num_rows)
            table = table.slice(room)
            if self.rows == self.limit:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.rows, self.index = None, 0, self.index + 1


def _load_instructions(fmt: str) -> str:
    """The card's "how to load it" section; PATH is the exported folder or the Hub repo it was pushed to."""
    if fmt == "hf":
        load = 'from datasets import load_from_disk\n\ndataset = load_from_disk("PATH")'
    elif fmt == "parquet":
        load = (
            "from datasets import load_dataset\n\n"
            'dataset = load_dataset("PATH")   # splits from the file names; or, explicitly:\n'
            'dataset = load_dataset("parquet", data_files={"train": "PATH/train.parquet", '
            '"test": "PATH/test.parquet"})'
        )
    else:
        load = 'from datasets import load_dataset\n\ndataset = load_dataset("PATH")'
    trl = (
        "from trl import DPOConfig, DPOTrainer\n\n"
        'trainer = DPOTrainer(model=model, args=DPOConfig(output_dir="out"), processing_class=tokenizer,\n'
        '                     train_dataset=dataset["train"], eval_dataset=dataset.get("test"))\n'
        "trainer.train()"
    )
    return (
        "`PATH` is this folder, or the Hub repo id it was pushed to.\n\n"
        f"```python\n{load}\n```\n\nWith TRL (the extra columns are ignored):\n\n```python\n{trl}\n```\n\n"
        "Or TRL's command line: `trl dpo --dataset_name PATH --model_name_or_path MODEL`."
    )


# --- the Hub ------------------------------------------------------------------------------------------------


def push_export(
    result: ExportResult,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload an export folder to the Hub dataset repo `repo_id` (created if needed); return its URL.
    `token` and `endpoint` default to huggingface_hub's own settings (`hf auth login`, HF_TOKEN,
    HF_ENDPOINT). Any failure is one `PushError` line that says the export on disk is complete."""
    if result.format not in PUSHABLE:
        raise PushError(
            f"--push-to-hub takes --format {' or '.join(PUSHABLE)} (a save_to_disk folder is for load_from_disk)"
        )
    from huggingface_hub import HfApi, constants

    api = HfApi(token=token, endpoint=endpoint)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(result.out_dir),
            repo_id=repo_id,
            repo_type="dataset",
            commit_message=f"dpop export of {result.dataset_id} ({result.style})",
        )
    except Exception as error:  # offline, DNS, 401/403/404, quota: all the same to the user
        raise PushError(
            f"could not push to the Hub dataset repo {repo_id}: {_reason(error)}. The export in "
            f"{result.out_dir} is complete; push it later with: hf upload {repo_id} {result.out_dir} "
            "--repo-type dataset"
        ) from None
    return f"{(endpoint or constants.ENDPOINT).rstrip('/')}/datasets/{repo_id}"


def _reason(error: BaseException) -> str:
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE)"
    text = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    # by class name: huggingface_hub's HTTP client has changed (requests, httpx, httpx2) and will again
    if {kind.__name__ for kind in type(error).__mro__} & _UNREACHABLE:
        return f"the Hub cannot be reached ({text})"
    return text


_UNREACHABLE = {"ConnectionError", "TransportError", "Timeout", "TimeoutException"}
