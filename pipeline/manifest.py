"""The dataset manifest (`<ws>/datasets/<id>/manifest.json`) as typed records, read and written here.

The JSON keys are those readers have always used (`pipeline.sql`, `pipeline.lineage`, the report, the
trainer, `dpop refs`), so a manifest written here reads as before:

    contract {name, version}          the shard contract the files follow
    dataset_id                        ds-<hash> (the build stage's id), or <ds id>-ref-<hash>
    parents [{id, kind, relation}]    what the version was made from
    inputs [{ingest_id, source_uri}]  the ingests a build curated
    tokenizer {path, sha256, chat_template_sha256, chat_template, pad_token_id, eos_token_id}
    max_length, max_prompt_length, truncation
    config                            the curation config as given (informative; the id uses its hash)
    identity                          what the id was computed from
    reference_model                   null, or {id, path, dtype} once reference log-probs are stored
    splits {train|eval: {rows, shards [{file, rows, bytes, sha256}]}}
    funnel [[step, rows_in, dropped, reason], ...]

Keys this module does not know are kept in `extra` and written back, so a newer writer's manifest
survives a rewrite by this version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.atomic import write_text_atomic
from pipeline.contracts import load_contract
from pipeline.funnel import FunnelStep, funnel_json, read_funnel
from pipeline.shards import CONTRACT, MANIFEST, ShardError, ShardInfo
from pipeline.stage import Artifact, StageContext
from pipeline.workspace import Workspace

_KNOWN = (
    "contract",
    "dataset_id",
    "parents",
    "inputs",
    "tokenizer",
    "max_length",
    "max_prompt_length",
    "truncation",
    "config",
    "identity",
    "reference_model",
    "splits",
    "funnel",
)


@dataclass(frozen=True)
class TokenizerInfo:
    """What the shards were tokenised with; `sha256` is what a model's tokenizer is checked against."""

    path: str | None = None
    sha256: str | None = None
    chat_template_sha256: str | None = None
    chat_template: str | None = None  # "tokenizer" (its own template) or "plain"
    pad_token_id: int | None = None
    eos_token_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "chat_template_sha256": self.chat_template_sha256,
            "chat_template": self.chat_template,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenizerInfo:
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SplitInfo:
    """One split: its row count and its shard files, in reading order."""

    rows: int
    shards: tuple[ShardInfo, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "shards": [shard.as_dict() for shard in self.shards]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SplitInfo:
        shards = tuple(
            ShardInfo(s["file"], int(s["rows"]), int(s["bytes"]), s["sha256"])
            for s in data.get("shards") or []
        )
        return cls(int(data.get("rows", sum(s.rows for s in shards))), shards)


def shard_artifacts(ctx: StageContext, dataset_id: str, splits: Mapping[str, SplitInfo]) -> list[Artifact]:
    """A dataset version's shard files as stage outputs (catalog rows), each `part_of` the version."""
    return [
        Artifact(
            shard.sha256,
            "shard",
            ctx.path(shard.file),
            rows=shard.rows,
            contract=CONTRACT,
            meta={"dataset_id": dataset_id, "split": split, "file": shard.file, "bytes": shard.bytes},
            parents=((dataset_id, "part_of"),),
        )
        for split, info in splits.items()
        for shard in info.shards
    ]


@dataclass(frozen=True)
class Parent:
    id: str
    kind: str
    relation: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "relation": self.relation}


@dataclass(frozen=True)
class IngestInput:
    ingest_id: str
    source_uri: str

    def to_json(self) -> dict[str, str]:
        return {"ingest_id": self.ingest_id, "source_uri": self.source_uri}


def _current_contract() -> dict[str, str]:
    return {"name": CONTRACT, "version": load_contract(CONTRACT).version}


@dataclass(frozen=True)
class DatasetManifest:
    dataset_id: str
    splits: Mapping[str, SplitInfo]
    parents: tuple[Parent, ...] = ()
    inputs: tuple[IngestInput, ...] = ()
    tokenizer: TokenizerInfo = field(default_factory=TokenizerInfo)
    max_length: int | None = None
    max_prompt_length: int | None = None
    truncation: str | None = None
    config: Mapping[str, Any] | None = None
    identity: Mapping[str, Any] | None = None
    reference_model: Mapping[str, Any] | None = None
    funnel: tuple[FunnelStep, ...] = ()
    contract: Mapping[str, Any] = field(default_factory=_current_contract)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(split.rows for split in self.splits.values())

    def split_rows(self, split: str) -> int:
        info = self.splits.get(split)
        return info.rows if info is not None else 0

    def to_json(self) -> dict[str, Any]:
        data = {
            **self.extra,
            "contract": dict(self.contract),
            "dataset_id": self.dataset_id,
            "parents": [parent.to_json() for parent in self.parents],
            "inputs": [item.to_json() for item in self.inputs],
            "tokenizer": self.tokenizer.to_json(),
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
            "truncation": self.truncation,
            "config": self.config,
            "identity": self.identity,
            "reference_model": self.reference_model,
            "splits": {name: info.to_json() for name, info in self.splits.items()},
            "funnel": funnel_json(self.funnel),
        }
        # a round trip through json: tuples become lists, so the written file and to_json agree
        return json.loads(json.dumps(data))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "manifest") -> DatasetManifest:
        try:
            return cls(
                dataset_id=data["dataset_id"],
                splits={name: SplitInfo.from_json(info) for name, info in (data.get("splits") or {}).items()},
                parents=tuple(Parent(p["id"], p["kind"], p["relation"]) for p in data.get("parents") or []),
                inputs=tuple(IngestInput(i["ingest_id"], i["source_uri"]) for i in data.get("inputs") or []),
                tokenizer=TokenizerInfo.from_json(data.get("tokenizer") or {}),
                max_length=data.get("max_length"),
                max_prompt_length=data.get("max_prompt_length"),
                truncation=data.get("truncation"),
                config=data.get("config"),
                identity=data.get("identity"),
                reference_model=data.get("reference_model"),
                funnel=tuple(read_funnel(data.get("funnel"))),
                contract=data.get("contract") or _current_contract(),
                extra={key: value for key, value in data.items() if key not in _KNOWN},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ShardError(f"{where} is malformed: {type(error).__name__}: {error}") from error

    def write(self, folder: str | Path) -> Path:
        """Write `<folder>/manifest.json` atomically; a dataset version exists once its manifest does,
        so a build writes it last."""
        text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        return write_text_atomic(Path(folder) / MANIFEST, text)


def read(path: str | Path) -> DatasetManifest:
    """The manifest in a file (`ShardError` when it is absent or malformed)."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"no dataset manifest at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ShardError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, Mapping):
        raise ShardError(f"{path} must hold a JSON object")
    return DatasetManifest.from_json(data, where=str(path))


def load(ws: Workspace, dataset_id: str) -> DatasetManifest:
    """The manifest of a dataset version in a workspace."""
    path = ws.dataset_dir(dataset_id) / MANIFEST
    if not path.is_file():
        raise ShardError(f"dataset version {dataset_id!r} not found (no {path})")
    return read(path)
