"""Cards: the README.md that travels with an exported dataset or a trained model, and what they are made of.

`dataset_lineage(ws, dataset_id)` gathers, from the files a dataset version left in the workspace (its
manifest, pairs.parquet, rejections.parquet and each ingest's ingest.json), what a reader of the data needs:
the source files with their licences and how many of their rows were kept or rejected, the curation funnel
and the ids that trace it (`dpop lineage`). `dataset_card` and `model_card` render it as Hugging Face cards
(YAML front matter through huggingface_hub's card data classes, then Markdown sections); the experiment
trackers (`dpop.trainer`) send the same record with a run.

Licences: the nearest LICENSE/LICENCE/COPYING file beside or above each source file (as published datasets
ship one at their root), recognised by its text and named by its Hub identifier (`mit`, `apache-2.0`,
`cc-by-4.0` …); `other` for a file we do not recognise, `unknown` where there is none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import polars as pl

from pipeline import manifest as manifest_module
from pipeline.funnel import FunnelStep
from pipeline.workspace import Workspace

LICENSE_FILE_NAMES = frozenset(
    name.lower()
    for stem in ("LICENSE", "LICENCE", "COPYING")
    for name in (stem, f"{stem}.txt", f"{stem}.md", f"{stem}.rst")
)
# (Hub licence id, every phrase its text holds), most specific first: "Attribution-NonCommercial-ShareAlike"
# must be tried before "Attribution-ShareAlike" and "Attribution".
_LICENSE_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cc-by-nc-sa-4.0", ("attribution-noncommercial-sharealike 4.0",)),
    ("cc-by-nc-nd-4.0", ("attribution-noncommercial-noderivatives 4.0",)),
    ("cc-by-nc-4.0", ("attribution-noncommercial 4.0",)),
    ("cc-by-nd-4.0", ("attribution-noderivatives 4.0",)),
    ("cc-by-sa-4.0", ("attribution-sharealike 4.0",)),
    ("cc-by-4.0", ("attribution 4.0 international",)),
    ("cc-by-sa-3.0", ("attribution-sharealike 3.0",)),
    ("cc-by-3.0", ("attribution 3.0",)),
    ("cc0-1.0", ("cc0 1.0",)),
    ("odc-by", ("open data commons attribution license",)),
    ("odbl", ("open database license",)),
    ("agpl-3.0", ("gnu affero general public license", "version 3")),
    ("lgpl-3.0", ("gnu lesser general public license", "version 3")),
    ("gpl-3.0", ("gnu general public license", "version 3")),
    ("gpl-2.0", ("gnu general public license", "version 2")),
    ("mpl-2.0", ("mozilla public license", "2.0")),
    ("apache-2.0", ("apache license", "version 2.0")),
    ("bsd-3-clause", ("redistribution and use in source and binary forms", "neither the name")),
    ("bsd-2-clause", ("redistribution and use in source and binary forms",)),
    ("unlicense", ("this is free and unencumbered software released into the public domain",)),
    ("mit", ("permission is hereby granted, free of charge",)),
    ("mit", ("mit license",)),  # a file that only names it
)


# --- licences ------------------------------------------------------------------------------------------


def find_license_file(path: str | os.PathLike[str]) -> Path | None:
    """The nearest licence file in the folder of `path` (a file) or any folder above it, or None."""
    start = Path(path)
    folders = [start.parent, *start.parent.parents] if not start.is_dir() else [start, *start.parents]
    for folder in folders:
        try:
            names = sorted(os.listdir(folder))
        except OSError:  # unreadable or gone: look further up
            continue
        for name in names:
            if name.lower() in LICENSE_FILE_NAMES and (folder / name).is_file():
                return folder / name
    return None


def license_id(text: str) -> str:
    """The Hub licence identifier of a licence text, or `other` when none of the known ones matches."""
    flat = " ".join(text.lower().split())  # line breaks and indentation differ between copies
    for identifier, phrases in _LICENSE_SIGNATURES:
        if all(phrase in flat for phrase in phrases):
            return identifier
    return "other"


def source_license(source_uri: str) -> tuple[str, str | None]:
    """(licence id, licence file) for a source URI; `unknown` for a hub dataset or a file with no licence."""
    path = local_path(source_uri)
    if path is None:
        return "unknown", None
    found = find_license_file(path)
    if found is None:
        return "unknown", None
    return license_id(found.read_text(encoding="utf-8", errors="replace")[:200_000]), str(found)


def local_path(source_uri: str) -> Path | None:
    parsed = urlparse(source_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme:
        return Path(source_uri)
    return None


# --- lineage ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    """One source file of a dataset version and what became of its rows."""

    uri: str
    name: str
    format: str | None = None
    sha256: str | None = None
    ingest_id: str | None = None
    records_read: int | None = None  # records of the file (ingest's count)
    rejected_at_ingest: int | None = None
    pairs: int | None = None  # pairs ingest made of them (a record may yield several)
    rejected_in_build: int = 0  # curate/tokenize rejections of this dataset version
    kept: int = 0  # pairs of this dataset version
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)  # ingest and build together
    license: str = "unknown"
    license_file: str | None = None


@dataclass(frozen=True)
class DatasetLineage:
    """What a dataset version is made of (see the module docstring)."""

    dataset_id: str
    pairs_dataset_id: str  # the version whose curation kept the pairs (a -ref- version carries its parent's)
    splits: Mapping[str, int]
    funnel: tuple[FunnelStep, ...]
    sources: tuple[SourceInfo, ...]
    parents: tuple[Mapping[str, str], ...] = ()
    reference_model: Mapping[str, Any] | None = None
    tokenizer_sha256: str | None = None
    max_length: int | None = None

    @property
    def rows(self) -> int:
        return sum(self.splits.values())

    @property
    def licenses(self) -> list[str]:
        return sorted({source.license for source in self.sources})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["funnel"] = [step.as_dict() for step in self.funnel]
        return json.loads(json.dumps(data, default=str))


def dataset_lineage(ws: Workspace, dataset_id: str) -> DatasetLineage:
    """The lineage of a dataset version from its files (a missing pairs or ingest file leaves those counts
    empty rather than failing: a trained model's card must not depend on a workspace being complete)."""
    manifest = manifest_module.load(ws, dataset_id)
    folder = ws.dataset_dir(dataset_id)
    kept = _count_by_source(folder / "pairs.parquet")
    build_rejects = _reasons_by_source(folder / "rejections.parquet")
    sources = tuple(
        _source_info(ws, item.ingest_id, item.source_uri, kept, build_rejects) for item in manifest.inputs
    )
    return DatasetLineage(
        dataset_id=dataset_id,
        pairs_dataset_id=dataset_id.split("-ref-")[0],
        splits={name: manifest.splits[name].rows for name in sorted(manifest.splits, key=_split_order)},
        funnel=tuple(manifest.funnel),
        sources=sources,
        parents=tuple(parent.to_json() for parent in manifest.parents),
        reference_model=manifest.reference_model,
        tokenizer_sha256=manifest.tokenizer.sha256,
        max_length=manifest.max_length,
    )


def _split_order(name: str) -> tuple[bool, str]:
    return name != "train", name  # train first


def _count_by_source(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    counts = pl.scan_parquet(path).group_by("source_uri").agg(pl.len()).collect()
    return dict(zip(counts["source_uri"].to_list(), counts["len"].to_list(), strict=True))


def _reasons_by_source(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        return {}
    counts = pl.scan_parquet(path).group_by("source_uri", "reason").agg(pl.len()).collect()
    reasons: dict[str, dict[str, int]] = {}
    for uri, reason, count in counts.iter_rows():
        reasons.setdefault(uri, {})[reason] = count
    return reasons


def _source_info(
    ws: Workspace,
    ingest_id: str,
    uri: str,
    kept: Mapping[str, int],
    build_rejects: Mapping[str, Mapping[str, int]],
) -> SourceInfo:
    record = _ingest_record(ws, ingest_id)
    reasons = dict(record.get("rejected_by_reason") or {})
    for reason, count in build_rejects.get(uri, {}).items():
        reasons[reason] = reasons.get(reason, 0) + count
    license_name, license_file = source_license(uri)
    return SourceInfo(
        uri=uri,
        name=record.get("source_name") or Path(urlparse(uri).path).name or uri,
        format=record.get("format"),
        sha256=record.get("source_sha256"),
        ingest_id=ingest_id,
        records_read=record.get("rows_read"),
        rejected_at_ingest=record.get("rows_rejected"),
        pairs=record.get("pairs_written"),
        rejected_in_build=sum(build_rejects.get(uri, {}).values()),
        kept=kept.get(uri, 0),
        rejected_by_reason=dict(sorted(reasons.items())),
        license=license_name,
        license_file=license_file,
    )


def _ingest_record(ws: Workspace, ingest_id: str) -> dict[str, Any]:
    path = ws.sources_dir / ingest_id / "ingest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --- Markdown pieces -------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        text = "–" if value is None else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def funnel_section(lineage: DatasetLineage) -> str:
    steps = [
        [step.step, _count(step.rows_in), _count(step.dropped), step.reason or ""]
        for step in lineage.funnel
        if step.step == "input" or step.dropped
    ]
    read = [s.records_read for s in lineage.sources]
    ingest_rejects = [s.rejected_at_ingest for s in lineage.sources]
    lines = ["## The funnel", ""]
    if lineage.sources and None not in read:
        lines.append(
            f"Ingest read {_count(sum(read))} records from {len(lineage.sources)} file(s) and rejected "
            f"{_count(sum(r or 0 for r in ingest_rejects))}; curation then ran these steps (steps that "
            "dropped nothing are left out):"
        )
        lines.append("")
    lines.append(_table(["step", "rows in", "dropped", "reason code"], steps))
    splits = ", ".join(f"{name} {_count(rows)}" for name, rows in lineage.splits.items())
    lines += ["", f"Kept: {_count(lineage.rows)} pairs ({splits})."]
    return "\n".join(lines)


def sources_section(lineage: DatasetLineage) -> str:
    rows = [
        [
            source.name,
            source.format,
            source.license,
            _count(source.records_read),
            _count(source.rejected_at_ingest),
            _count(source.rejected_in_build),
            _count(source.kept),
            ", ".join(f"{reason} {count}" for reason, count in source.rejected_by_reason.items()) or "",
        ]
        for source in lineage.sources
    ]
    header = ["file", "format", "license", "records", "rejected at ingest", "rejected in curation", "kept"]
    return "\n".join(
        [
            "## Sources",
            "",
            _table([*header, "rejections by reason"], rows),
            "",
            "Licences are read from the LICENSE file beside or above each source file; check each source's "
            "terms before you share this data.",
        ]
    )


def lineage_section(lineage: DatasetLineage) -> str:
    lines = [
        "## Lineage",
        "",
        f"- dataset version: `{lineage.dataset_id}`"
        + (
            f" (its pairs were kept by `{lineage.pairs_dataset_id}`)"
            if lineage.pairs_dataset_id != lineage.dataset_id
            else ""
        ),
    ]
    if lineage.tokenizer_sha256:
        lines.append(f"- tokenizer: sha256 `{lineage.tokenizer_sha256}` (tokenizer.json)")
    if lineage.reference_model:
        ref = lineage.reference_model
        lines.append(f"- reference log-probs: model `{ref.get('id')}` in {ref.get('dtype', 'float32')}")
    for source in lineage.sources:
        lines.append(
            f"- source `{source.uri}`: sha256 `{source.sha256 or 'unknown'}`, ingest `{source.ingest_id}`"
        )
    lines += [
        "",
        "Every pair keeps its `pair_id`; in the workspace that built it, "
        f"`dpop lineage {lineage.dataset_id}` prints the whole tree and `dpop sql` finds each pair's "
        "source file and row (`SELECT source_uri, source_row FROM pairs_history WHERE pair_id = '…'`).",
    ]
    return "\n".join(lines)


def _size_category(rows: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if rows < limit:
            return label
    return "n>1M"


def _license_field(licenses: list[str]) -> str | list[str]:
    return licenses[0] if len(licenses) == 1 else licenses


# --- dataset card ------------------------------------------------------------------------------------------


def dataset_card(
    lineage: DatasetLineage,
    style: str,
    split_rows: Mapping[str, int],
    split_bytes: Mapping[str, int],
    load_instructions: str,
) -> str:
    """README.md of an export: front matter (licences, splits with their sizes, task, size category) and
    the sections above. No `configs`: the split files are found by their names (`train…`, `test…`), and
    `datasets` keys its cache of a local folder with configs by the configs alone, not the files' dates,
    so a folder exported again would load its old rows from the cache."""
    from huggingface_hub import DatasetCard, DatasetCardData

    splits = [
        {"name": name, "num_bytes": split_bytes.get(name, 0), "num_examples": rows}
        for name, rows in split_rows.items()
    ]
    card_data = DatasetCardData(
        license=_license_field(lineage.licenses),
        task_categories=["text-generation"],
        tags=["dpo", "preference", "trl", "dpop"],
        size_categories=[_size_category(lineage.rows)],
        pretty_name=f"dpop dataset {lineage.dataset_id}",
        dataset_info={"splits": splits},
    )
    shown = ", ".join(f"`{name}` {_count(rows)}" for name, rows in split_rows.items())
    body = "\n\n".join(
        [
            f"# dpop dataset `{lineage.dataset_id}`",
            f"Preference pairs kept by dpop's curation, in TRL's {_STYLES[style]} format. Splits: {shown} "
            "(`test` is dpop's eval split: held out by prompt, so no prompt is on both sides). Extra columns: "
            "`pair_id`, `source` and the scores (`chosen_score`, `rejected_score`, `score_margin`, "
            "`edit_distance`, `edit_ratio`).",
            funnel_section(lineage),
            sources_section(lineage),
            lineage_section(lineage),
            "## How to load it\n\n" + load_instructions,
        ]
    )
    return str(DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n"))


_STYLES = {
    "conversational": "conversational preference (`prompt`: a list of messages; `chosen`/`rejected`: one "
    "assistant message each)",
    "standard": "standard preference (`prompt`, `chosen`, `rejected` as text; the prompt rendered with the "
    "dataset's chat template, as dpop tokenised it)",
}


# --- model card ----------------------------------------------------------------------------------------------


def model_card(
    run_record: Mapping[str, Any], metrics: Mapping[str, Any] | None, lineage: DatasetLineage | None
) -> str:
    """README.md for a trained model folder (beside the save_pretrained files): base model, dataset id and
    sources, loss and DPOP settings, final metrics and how to load it.

    `run_record` is the run's run.json, `metrics` its final metrics (default: the record's), `lineage` the
    trained-on dataset's `dataset_lineage` (None: the sources are left out)."""
    from huggingface_hub import ModelCard, ModelCardData

    metrics = dict(run_record.get("final_metrics") or {}) if metrics is None else dict(metrics)
    lora = run_record.get("finetuning") == "lora"
    base = run_record.get("base_model") or {}
    card_data = ModelCardData(
        library_name="peft" if lora else "transformers",
        pipeline_tag="text-generation",
        tags=["dpop", "dpo", "preference-optimization", *([] if lineage is None else ["trl"])],
        license=_license_field(lineage.licenses) if lineage is not None and lineage.sources else None,
    )
    sections = [
        f"# {run_record.get('run_id', 'dpop model')}",
        f"Trained by dpop from `{base.get('path')}` (`{base.get('id')}`) on dataset version "
        f"`{run_record.get('dataset_id')}`, {'a LoRA adapter' if lora else 'full fine-tuning'}. "
        "The licence above is that of the training data's sources; the base model's own terms apply too.",
        _training_section(run_record),
        _metrics_section(metrics),
    ]
    if lineage is not None:
        sections += [sources_section(lineage), lineage_section(lineage)]
    sections.append(_model_loading(lora))
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"))


def _training_section(run_record: Mapping[str, Any]) -> str:
    loss = dict(run_record.get("loss") or {})
    config = run_record.get("config") or {}
    reference = run_record.get("reference_model") or {}
    rows = [["loss", loss.pop("name", None)], *[[key, value] for key, value in sorted(loss.items())]]
    rows.append(["reference", f"{reference.get('id')} ({reference.get('source', 'stored log-probs')})"])
    for key in (
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "lr_scheduler_type",
        "model_dtype",
        "bf16",
        "fp16",
        "lora_r",
        "seed",
    ):
        if key in config:
            rows.append([key, config[key]])
    note = (
        "DPOP (Pal et al. 2024, arXiv 2402.13228): "
        "L = −log σ(β((r_w − r_l) − λ·max(0, −r_w))), r = log πθ(y|x) − log πref(y|x); λ = 0 is DPO."
    )
    return "\n".join(["## Training", "", note, "", _table(["setting", "value"], rows)])


def _metrics_section(metrics: Mapping[str, Any]) -> str:
    def shown(value: Any) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    rows = [[key, shown(value)] for key, value in sorted(metrics.items()) if isinstance(value, int | float)]
    return "\n".join(
        [
            "## Final metrics",
            "",
            "TRL's names; `eval_` ones on the held-out split; `dpop/penalty` is DPOP's penalty term, "
            "`logps/chosen_post_edit` the chosen answers' mean token log-prob after the first edit.",
            "",
            _table(["metric", "value"], rows) if rows else "(none recorded)",
        ]
    )


def _model_loading(lora: bool) -> str:
    if lora:
        code = (
            "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            'model = AutoPeftModelForCausalLM.from_pretrained("PATH")   # the base model is read from the adapter config\n'
            'tokenizer = AutoTokenizer.from_pretrained("PATH")'
        )
    else:
        code = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'model = AutoModelForCausalLM.from_pretrained("PATH")\n'
            'tokenizer = AutoTokenizer.from_pretrained("PATH")'
        )
    return f"## How to load it\n\n`PATH` is this folder (or the Hub repo it was pushed to).\n\n```python\n{code}\n```"


def write_model_card(ws: Workspace, run_dir: str | os.PathLike[str]) -> Path:
    """Write `<run_dir>/model/README.md` from the run's run.json and its dataset's lineage; the training
    stage calls it once run.json is written (it can also be run later on any finished run)."""
    from pipeline.atomic import write_text_atomic

    run_dir = Path(run_dir)
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    try:
        lineage = dataset_lineage(ws, record["dataset_id"])
    except (OSError, ValueError, KeyError):  # the dataset folder is gone: a card without its sources
        lineage = None
    model_dir = Path(record.get("model_dir") or run_dir / "model")
    return write_text_atomic(model_dir / "README.md", model_card(record, None, lineage))
