"""`dpop select`: a new dataset version holding the pairs a rule selects, and every other pair as a
rejection (`not_selected`) with its score and the rule.

    dataset version ─┬─ model log-probs (reference: the shards' ref_*, or a `dpop logps` table;
                     │                   probe: a `dpop logps` table)
                     ▼
    candidate frame: one row per pair (its columns, token counts, the models' log-probs)
        ─▶ rule (`pipeline.select_rules`): a score per pair, an order
        ─▶ band, keep / keep_n, per-group quotas (`pipeline.mix`: sources, edit buckets)
        ─▶ weights (`pipeline.mix.pair_weights`)
        ─▶ <ws>/datasets/<parent>-sel-<hash>/: shards and pairs of the kept pairs (+ `weight`),
           rejections = the parent's + `not_selected`, selection.parquet (every pair's score, rank,
           decision, weight), manifest.json (the parent's, a `select` funnel step, `selection`)

Only the train split is selected from by default (`select_eval: true` selects eval pairs too): runs
trained on different selections are then evaluated on the same pairs. The selection is deterministic:
ties are broken by pair_id, and the rules that sample (`random`, `edit_quota`) hash the pair id with the
seed. Conservation is checked: parent rows = kept + not_selected, and the funnel continues the parent's.

The stage's id is `<parent id>-sel-<hash>` of the parent, the models and log-prob tables it read, and the
config (`SelectionConfig`); its inputs give the lineage edges: `selected_from` the parent,
`reference_model` / `probe_model` the models, `scored_with` the log-prob tables. No torch here: the
log-probs are computed before (`dpop.model_logps`), the CLI (`cli/commands/select.py`) runs both.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import ConfigError, load, read_yaml, setting, validate_fields
from pipeline.contracts import load_contract
from pipeline.funnel import FunnelStep
from pipeline.identity import stable_hash
from pipeline.manifest import DatasetManifest, Parent, SplitInfo, shard_artifacts
from pipeline.manifest import load as load_manifest
from pipeline.mix import allocate, pair_weights, resolve_sources
from pipeline.select_rules import DEFAULT_EDIT_BUCKETS, PROBE, REF, RULES, Rule
from pipeline.shards import SPLITS, ShardError, open_split, write_split
from pipeline.stage import (
    INLINE,
    Artifact,
    Executor,
    Input,
    Stage,
    StageContext,
    StageOutput,
    StageRecord,
    run_stage,
    workspace_path,
)
from pipeline.workspace import Workspace

PAIRS_FILE, REJECTIONS_FILE, SELECTION_FILE = "pairs.parquet", "rejections.parquet", "selection.parquet"
REASON, STAGE = "not_selected", "select"
BIG = 10**9
# Pair columns the rules do not read: the texts (their lengths are columns), kept out of memory.
TEXT_COLUMNS = ("prompt", "chosen", "rejected")
PREFIX = {"reference": "ref", "probe": "probe"}


# --- config ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionConfig:
    """What `dpop select` does (a YAML file with these keys, or the command's flags). See docs/selection.md."""

    rule: str = setting("random", choices=tuple(RULES), help="the rule that scores and orders the pairs")
    keep: float | None = setting(None, gt=0, le=1, help="share of the selectable pairs to keep")
    keep_n: int | None = setting(None, ge=1, le=BIG, help="number of pairs to keep")
    band_min: float | None = setting(None, ge=-1e12, le=1e12, help="lowest score a kept pair may have")
    band_max: float | None = setting(None, ge=-1e12, le=1e12, help="highest score a kept pair may have")
    score: str | None = setting(None, nonempty=True, help="the sql rule's DuckDB expression")
    ascending: bool = False  # the sql rule: keep the lowest scores
    beta: float = setting(0.1, gt=0, le=100, help="β of the implicit reward β·log πθ/πref")
    external_scale: float = setting(1.0, gt=0, le=1e12, help="margin: external score margin / this")
    fusion: str = setting("mul", choices=("mul", "mean", "bayes"), help="margin: how the two margins fuse")
    edit_buckets: tuple[float, ...] = setting(DEFAULT_EDIT_BUCKETS, ge=0, le=1)
    edit_shares: tuple[float, ...] | None = setting(None, ge=0, le=BIG)
    mix: dict[str, float] | None = None  # source name -> share of the kept pairs
    quotas: dict[str, int] | None = None  # source name -> number of kept pairs
    weight: str | None = setting(None, nonempty=True, help="DuckDB expression: each kept pair's weight")
    source_weights: dict[str, float] | None = None  # source name -> weight factor
    seed: int = setting(0, ge=0, le=2**31 - 1)
    select_eval: bool = False  # select among eval pairs too (default: eval kept whole)

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.keep is not None and self.keep_n is not None:
            raise ConfigError("give keep or keep_n, not both", key="keep")
        if None not in (self.band_min, self.band_max) and self.band_min > self.band_max:
            raise ConfigError(f"({self.band_min:g}) is above band_max ({self.band_max:g})", key="band_min")
        if self.mix is not None and self.quotas is not None:
            raise ConfigError("give mix (proportions) or quotas (counts), not both", key="mix")
        _check_buckets(self.edit_buckets, self.edit_shares)
        for key, values, low in (
            ("mix", self.mix, 0),
            ("quotas", self.quotas, 0),
            ("source_weights", self.source_weights, 0),
        ):
            for name, value in (values or {}).items():
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not np.isfinite(value)
                    or value < low
                ):
                    raise ConfigError(f"must be a finite number >= {low}, got {value!r}", key=f"{key}.{name}")
        if self.mix is not None and not any(v > 0 for v in self.mix.values()):
            raise ConfigError("gives no source a share above 0", key="mix")

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def _check_buckets(edges: tuple[float, ...], shares: tuple[float, ...] | None) -> None:
    if (
        len(edges) < 2
        or edges[0] != 0
        or edges[-1] != 1
        or any(b <= a for a, b in zip(edges, edges[1:], strict=False))
    ):
        raise ConfigError(f"must rise strictly from 0 to 1, got {list(edges)}", key="edit_buckets")
    if shares is not None and len(shares) != len(edges) - 1:
        raise ConfigError(
            f"needs one share per bucket ({len(edges) - 1}), got {len(shares)}", key="edit_shares"
        )
    if shares is not None and not sum(shares) > 0:
        raise ConfigError("gives no bucket a share above 0", key="edit_shares")


def load_selection_config(
    source: str | os.PathLike[str] | dict[str, Any] | SelectionConfig | None, **overrides: Any
) -> SelectionConfig:
    """A config from a YAML file, a dict or as is, with `overrides` (flags given on the command line,
    None meaning "not given") applied on top; one-line errors naming the file and key."""
    if isinstance(source, SelectionConfig):
        data, where = source.as_dict(), "selection config"
    elif isinstance(source, str | os.PathLike):
        data, where = dict(read_yaml(source, "selection config") or {}), str(source)
    else:
        data, where = dict(source or {}), "selection config"
    data.update({key: value for key, value in overrides.items() if value is not None})
    return load(SelectionConfig, data, source=where)


# --- what the selection reads ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelScores:
    """The log-probs of one model a selection reads: a `model_logps` table (`logps_id`, `logps_path`),
    or, for the reference, the dataset's own `ref_*` columns (`logps_id` None)."""

    role: str  # reference | probe
    model_id: str
    model_path: str | None = None
    logps_id: str | None = None
    logps_path: str | None = None

    def inputs(self) -> list[Input]:
        items = [Input(Artifact(self.model_id, "model", self.model_path), f"{self.role}_model")]
        if self.logps_id is not None:
            items.append(
                Input(
                    Artifact(self.logps_id, "logps", self.logps_path, contract="model_logps"), "scored_with"
                )
            )
        return items

    @classmethod
    def from_record(cls, ws: Workspace, role: str, record: StageRecord) -> ModelScores:
        """From a `dpop.model_logps.ModelLogpsStage` record."""
        table = record.output("logps")
        model = next(i.artifact for i in record.inputs if i.artifact.kind == "model")
        return cls(role, model.id, model.path, table.id, str(table.location(ws)))


def stored_reference(manifest: DatasetManifest) -> ModelScores | None:
    """The reference whose log-probs the dataset's shards hold (a `dpop refs` version), if any."""
    reference = manifest.reference_model or {}
    if not reference.get("id"):
        return None
    return ModelScores("reference", reference["id"], reference.get("path"))


def candidate_frame(ws: Workspace, dataset_id: str, scores: list[ModelScores]) -> pl.DataFrame:
    """One row per shard row of every split (`split`, `row`), with the pair's columns from pairs.parquet
    (texts left out), token counts and the log-probs of `scores` (`ref_*`, `probe_*`)."""
    manifest = load_manifest(ws, dataset_id)
    frames = [_shard_rows(ws, dataset_id, split) for split in SPLITS if split in manifest.splits]
    frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    frame = _join_pairs(frame, ws.dataset_dir(dataset_id) / PAIRS_FILE, dataset_id)
    for item in scores:
        frame = _join_scores(frame, item)
    return frame


def _shard_rows(ws: Workspace, dataset_id: str, split: str) -> pl.DataFrame:
    table = open_split(ws, dataset_id, split)
    lengths = {
        f"{name}_tokens": pc.list_value_length(table.column(f"{name}_ids")).cast(pa.int32())
        for name in ("prompt", "chosen", "rejected")
    }
    columns = {"pair_id": table.column("pair_id"), **lengths}
    for name in (*REF, "weight"):
        if name in table.column_names:
            columns[f"_shard_{name}"] = table.column(name).cast(pa.float64())
    frame = pl.from_arrow(pa.table(columns))
    return frame.with_columns(split=pl.lit(split), row=pl.int_range(pl.len(), dtype=pl.Int64)).with_columns(
        _occurrence=pl.int_range(pl.len()).over("split", "pair_id")
    )


def _join_pairs(frame: pl.DataFrame, path: Path, dataset_id: str) -> pl.DataFrame:
    """The pair's columns, matched to shard rows by (split, pair_id, occurrence): a pair kept twice (no
    duplicate filter) is two rows in both files, in the same order."""
    if not path.is_file():
        raise ShardError(f"dataset {dataset_id} has no {PAIRS_FILE}: a selection needs the pairs' provenance")
    names = [n for n in pq.read_schema(path).names if n not in TEXT_COLUMNS]
    pairs = pl.read_parquet(path, columns=names).with_row_index("_pairs_row")
    if "split" not in pairs.columns:
        raise ShardError(f"{path} has no split column: rebuild the dataset with `dpop build`")
    pairs = pairs.with_columns(_occurrence=pl.int_range(pl.len()).over("split", "pair_id"))
    joined = frame.join(pairs, on=["split", "pair_id", "_occurrence"], how="left")
    unmatched = joined.filter(pl.col("_pairs_row").is_null())
    if unmatched.height or pairs.height != frame.height:
        raise ShardError(
            f"dataset {dataset_id}: {path} does not list the shards' pairs "
            f"({pairs.height} pairs for {frame.height} shard rows; first unmatched: "
            f"{unmatched['pair_id'][0] if unmatched.height else 'none'})"
        )
    return joined


def _join_scores(frame: pl.DataFrame, item: ModelScores) -> pl.DataFrame:
    prefix = PREFIX[item.role]
    chosen, rejected = f"{prefix}_chosen_logps", f"{prefix}_rejected_logps"
    if item.logps_path is None:  # the reference's values stored in the shards (dpop refs)
        if "_shard_ref_chosen_logps" not in frame.columns or frame["_shard_ref_chosen_logps"].null_count():
            raise ShardError(
                "the shards hold no reference log-probs for every pair: run `dpop refs` or give --reference"
            )
        return frame.with_columns(
            pl.col("_shard_ref_chosen_logps").alias(chosen),
            pl.col("_shard_ref_rejected_logps").alias(rejected),
        )
    table = pl.read_parquet(item.logps_path, columns=["pair_id", "chosen_logps", "rejected_logps"])
    table = table.unique("pair_id", keep="first").rename({"chosen_logps": chosen, "rejected_logps": rejected})
    joined = frame.drop([c for c in (chosen, rejected) if c in frame.columns]).join(
        table, on="pair_id", how="left"
    )
    missing = joined.filter(pl.col(chosen).is_null())
    if missing.height:
        raise ShardError(
            f"log-probs {item.logps_id} ({item.role}, model {item.model_id}) lack pair {missing['pair_id'][0]} "
            f"and {missing.height - 1} more: compute them on this dataset (`dpop logps --dataset …`)"
        )
    return joined.with_columns(pl.col(chosen).cast(pl.Float64), pl.col(rejected).cast(pl.Float64))


# --- the decision ------------------------------------------------------------------------------------


def choose(frame: pl.DataFrame, config: SelectionConfig) -> pl.DataFrame:
    """`frame` with `score`, `rank`, `kept`, `detail` (why not kept) and `weight` (null if none)."""
    rule = RULES[config.rule]
    frame = frame.with_columns(rule.score(frame, config).alias("score").fill_nan(None))
    selectable = pl.lit(True) if config.select_eval else pl.col("split") == "train"
    frame = frame.with_columns(
        _selectable=selectable,
        _in_band=pl.col("score").is_not_null() & _band(config),
        _group=_groups(frame, config, rule),
    )
    frame = _rank(frame, _order(rule, config))
    counts = _counts(frame, config, rule)
    frame = frame.with_columns(
        _group_rank=pl.when(pl.col("rank").is_not_null()).then(pl.col("rank").rank("ordinal").over("_group"))
    )
    quota = (
        pl.col("_group").replace_strict(counts, default=0, return_dtype=pl.Int64)
        if counts is not None
        else None
    )
    chosen = pl.col("rank").is_not_null() & (
        pl.col("_group_rank") <= quota if quota is not None else pl.lit(True)
    )
    frame = frame.with_columns(kept=~pl.col("_selectable") | chosen.fill_null(False))
    frame = frame.with_columns(detail=_detail(frame, config, counts))
    return frame.with_columns(weight=_weights(frame, config))


def _band(config: SelectionConfig) -> pl.Expr:
    condition = pl.lit(True)
    if config.band_min is not None:
        condition = condition & (pl.col("score") >= config.band_min)
    if config.band_max is not None:
        condition = condition & (pl.col("score") <= config.band_max)
    return condition


def _order(rule: Rule, config: SelectionConfig) -> str:
    if rule.name == "sql" and config.ascending:
        return "asc"
    return rule.order


def _rank(frame: pl.DataFrame, order: str) -> pl.DataFrame:
    """1-based rank of each candidate (selectable, in band) in the rule's order; ties by pair_id."""
    key = {"desc": -pl.col("score"), "asc": pl.col("score"), "abs_asc": pl.col("score").abs()}[order]
    candidates = frame.filter(pl.col("_selectable") & pl.col("_in_band")).with_columns(_key=key)
    ranked = candidates.sort(["_key", "pair_id", "split", "row"]).with_columns(
        rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int64)
    )
    return frame.join(ranked.select("split", "row", "rank"), on=["split", "row"], how="left")


def _groups(frame: pl.DataFrame, config: SelectionConfig, rule: Rule) -> pl.Series:
    """Each row's quota group: its source (mix, quotas), its edit bucket (edit_quota), or both."""
    parts = []
    if config.mix is not None or config.quotas is not None:
        parts.append(
            resolve_sources(frame["source"], config.mix or config.quotas, "mix" if config.mix else "quotas")
        )
    if rule.groups is not None:
        parts.append(rule.groups(frame, config)[0])
    if not parts:
        return pl.Series("_group", ["all"] * frame.height, dtype=pl.String)
    if len(parts) == 1:
        return parts[0].alias("_group")
    return (parts[0] + "|" + parts[1]).alias("_group")


def _counts(frame: pl.DataFrame, config: SelectionConfig, rule: Rule) -> dict[str, int] | None:
    """How many candidates each group keeps (None: every candidate)."""
    candidates = frame.filter(pl.col("rank").is_not_null())
    sizes = dict(candidates.group_by("_group").len().iter_rows()) if candidates.height else {}
    total = _total(frame, config, candidates.height)
    shares = _shares(frame, config, rule)
    if config.quotas is not None:
        return _split_quotas(sizes, config.quotas, shares)
    if shares is None:
        return None if total is None else {"all": total}
    return allocate(sizes, shares, total)


def _total(frame: pl.DataFrame, config: SelectionConfig, candidates: int) -> int | None:
    if config.keep_n is not None:
        return min(config.keep_n, candidates)
    if config.keep is not None:
        selectable = int(frame["_selectable"].sum())
        return min(int(round(config.keep * selectable)), candidates)
    return None


def _shares(frame: pl.DataFrame, config: SelectionConfig, rule: Rule) -> dict[str, float] | None:
    """Each group's share of the kept pairs (None: no groups, or quotas by count)."""
    buckets = rule.groups(frame, config)[1] if rule.groups is not None else None
    sources = config.mix
    if sources is None:
        return buckets
    if buckets is None:
        return dict(sources)
    return {f"{s}|{b}": sources[s] * buckets[b] for s in sources for b in buckets}


def _split_quotas(
    sizes: dict[str, int], quotas: dict[str, int], buckets: dict[str, float] | None
) -> dict[str, int]:
    """Counts per group for source quotas (split further by bucket shares under edit_quota)."""
    if buckets is None:
        return {g: min(int(quotas.get(g, 0)), size) for g, size in sizes.items()}
    counts = {}
    for source, quota in quotas.items():
        mine = {b: sizes.get(f"{source}|{b}", 0) for b in buckets}
        for bucket, count in allocate(mine, buckets, int(quota)).items():
            counts[f"{source}|{bucket}"] = count
    return counts


def _detail(frame: pl.DataFrame, config: SelectionConfig, counts: dict[str, int] | None) -> pl.Series:
    """Why each row not kept was left out (empty for kept rows)."""
    candidates = int(frame["rank"].is_not_null().sum())
    band = f"[{_g(config.band_min)}, {_g(config.band_max)}]"
    rows = []
    for kept, score, rank, group, group_rank in frame.select(
        "kept", "score", "rank", "_group", "_group_rank"
    ).iter_rows():
        if kept:
            rows.append("")
        elif score is None:
            rows.append(f"rule={config.rule}: no score for this pair")
        elif rank is None:
            rows.append(f"rule={config.rule} score={score:.6g}: outside the band {band}")
        elif counts is not None and group != "all":
            rows.append(
                f"rule={config.rule} score={score:.6g} rank={rank}/{candidates}: rank {group_rank} in group {group}, which keeps {counts.get(group, 0)}"
            )
        else:
            kept_n = counts["all"] if counts else candidates
            rows.append(
                f"rule={config.rule} score={score:.6g} rank={rank}/{candidates}: below the {kept_n} kept"
            )
    return pl.Series("detail", rows, dtype=pl.String)


def _g(value: float | None) -> str:
    return "-inf" if value is None else f"{value:g}"


def _weights(frame: pl.DataFrame, config: SelectionConfig) -> pl.Series:
    columns = [c for c in frame.columns if not c.startswith("_")]
    # the pairs the selection chose: eval pairs kept whole carry no weight (the trainer weights training only)
    kept = (frame["kept"] & frame["_selectable"]).to_numpy()
    weights = pair_weights(frame.select(columns), config.weight, config.source_weights, kept)
    if weights is None:
        return pl.Series("weight", [None] * frame.height, dtype=pl.Float32)
    return weights


# --- the stage ---------------------------------------------------------------------------------------


def dataset_input(dataset_id: str) -> Artifact:
    return Artifact(dataset_id, "dataset", str(Workspace(Path()).dataset_dir(dataset_id)))


@dataclass(frozen=True)
class SelectStage(Stage):
    """Select pairs of `dataset_id` with `config`, reading the log-probs of `scores` (module docstring)."""

    name = "select"
    version = 1
    id_prefix = "sel"
    placement = "data"

    dataset_id: str
    selection: SelectionConfig
    scores: tuple[ModelScores, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "selection", load_selection_config(self.selection))
        object.__setattr__(self, "scores", tuple(sorted(self.scores, key=lambda s: s.role)))
        roles = [s.role for s in self.scores]
        if len(set(roles)) != len(roles) or not set(roles) <= set(PREFIX):
            raise ValueError(f"select: one reference and one probe at most, got roles {roles}")
        missing = [need for need in RULES[self.selection.rule].needs if need not in roles]
        if missing:
            flags = " and ".join(f"--{need if need == 'probe' else 'reference'} MODEL" for need in missing)
            raise ValueError(
                f"rule {self.selection.rule} needs the log-probs of the {' and '.join(missing)} model: give {flags}"
            )

    def inputs(self) -> list[Input]:
        items = [Input(dataset_input(self.dataset_id), "selected_from")]
        for item in self.scores:
            items += item.inputs()
        return items

    def config(self) -> dict[str, Any]:
        contracts = ("dpop_shard", "rejection", "selection")
        return {
            "selection": self.selection.as_dict(),
            "reference_in_shards": any(s.logps_id is None for s in self.scores),
            "contracts": {name: load_contract(name).version for name in contracts},
        }

    @cached_property
    def id(self) -> str:  # type: ignore[override]
        identity = {
            "stage": self.name,
            "version": self.version,
            "inputs": sorted([i.artifact.id, i.relation] for i in self.inputs()),
            "config": self.config(),
        }
        return f"{self.dataset_id}-sel-{stable_hash(identity, 12)}"

    def folder(self, ws: Workspace) -> Path:
        return ws.dataset_dir(self.id)

    def label(self) -> str:
        return f"select {self.selection.rule} from {self.dataset_id}"

    def run(self, ctx: StageContext) -> StageOutput:
        parent = load_manifest(ctx.ws, self.dataset_id)
        frame = choose(candidate_frame(ctx.ws, self.dataset_id, list(self.scores)), self.selection)
        splits = _write_shards(ctx, self.dataset_id, parent, frame)
        kept_pairs = _write_pairs(ctx, self.dataset_id, frame)
        dropped = _write_rejections(ctx, self.dataset_id, frame)
        _write_selection(ctx, frame, self.selection.rule)
        if kept_pairs + dropped != frame.height or sum(s.rows for s in splits.values()) != kept_pairs:
            raise RuntimeError(f"select: {frame.height} pairs in, {kept_pairs} kept + {dropped} not selected")
        summary = selection_summary(frame, self.selection)
        manifest = self._manifest(parent, splits, frame.height, dropped, summary)
        manifest.write(ctx.out)
        return self._output(ctx, manifest, dropped, summary)

    def _manifest(
        self,
        parent: DatasetManifest,
        splits: dict[str, SplitInfo],
        rows_in: int,
        dropped: int,
        summary: dict[str, Any],
    ) -> DatasetManifest:
        parents = [Parent(self.dataset_id, "dataset", "selected_from")]
        parents += [Parent(s.model_id, "model", f"{s.role}_model") for s in self.scores]
        parents += [Parent(s.logps_id, "logps", "scored_with") for s in self.scores if s.logps_id]
        identity = {
            "stage": self.name,
            "version": self.version,
            "inputs": sorted([i.artifact.id, i.relation] for i in self.inputs()),
            "config": self.config(),
        }
        return DatasetManifest(
            dataset_id=self.id,
            splits=splits,
            parents=tuple(parents),
            inputs=parent.inputs,
            tokenizer=parent.tokenizer,
            max_length=parent.max_length,
            max_prompt_length=parent.max_prompt_length,
            truncation=parent.truncation,
            config=parent.config,
            identity=identity,
            reference_model=parent.reference_model,
            funnel=(*parent.funnel, FunnelStep(STAGE, rows_in, dropped, REASON)),
            extra={**parent.extra, "selection": summary},
        )

    def _output(
        self, ctx: StageContext, manifest: DatasetManifest, dropped: int, summary: dict[str, Any]
    ) -> StageOutput:
        kept = manifest.rows
        train, evaluation = manifest.split_rows("train"), manifest.split_rows("eval")
        meta = {
            "rule": self.selection.rule,
            "train_rows": train,
            "eval_rows": evaluation,
            "not_selected": dropped,
        }
        outputs = [
            Artifact(self.id, "dataset", workspace_path(ctx.ws, ctx.folder), kept, "dpop_shard", meta),
            Artifact(f"pairs-{self.id}", "pairs_kept", ctx.path(PAIRS_FILE), kept, "preference_pair"),
            Artifact(f"rejections-{self.id}", "rejections", ctx.path(REJECTIONS_FILE), contract="rejection"),
        ]
        outputs += shard_artifacts(ctx, self.id, manifest.splits)
        return StageOutput(
            outputs=outputs,
            counts={
                "rows_in": kept + dropped,
                "rows_out": kept,
                "train_rows": train,
                "eval_rows": evaluation,
                "not_selected": dropped,
            },
            rejected_by_reason={REASON: dropped} if dropped else {},
            summary={"selection": summary, "funnel": [list(s) for s in manifest.funnel]},
        )


# --- writing -----------------------------------------------------------------------------------------


def _write_shards(
    ctx: StageContext, dataset_id: str, parent: DatasetManifest, frame: pl.DataFrame
) -> dict[str, SplitInfo]:
    """The kept rows of each split, in their order, with `weight` when the selection sets weights."""
    splits = {}
    for split in parent.splits:
        rows = frame.filter(pl.col("split") == split).sort("row")
        table = open_split(ctx.ws, dataset_id, split).filter(pa.array(rows["kept"].to_numpy()))
        weights = rows.filter(pl.col("kept"))["weight"]
        if weights.null_count() < weights.len():
            column = weights.to_arrow().cast(pa.float32())
            table = table.drop_columns(["weight"]) if "weight" in table.column_names else table
            table = table.append_column(pa.field("weight", pa.float32(), nullable=True), column)
        per_shard = max((s.rows for s in parent.splits[split].shards), default=1)
        infos = write_split(ctx.out, split, table, rows_per_shard=max(per_shard, 1))
        splits[split] = SplitInfo(table.num_rows, tuple(infos))
    return splits


def _write_pairs(ctx: StageContext, dataset_id: str, frame: pl.DataFrame) -> int:
    rows = np.sort(frame.filter(pl.col("kept"))["_pairs_row"].to_numpy())
    table = pq.read_table(ctx.ws.dataset_dir(dataset_id) / PAIRS_FILE).take(pa.array(rows))
    pq.write_table(table, ctx.out / PAIRS_FILE)
    return table.num_rows


def _write_rejections(ctx: StageContext, dataset_id: str, frame: pl.DataFrame) -> int:
    """The parent's rejections, then one `not_selected` row per pair left out (input order)."""
    contract = load_contract("rejection")
    dropped = frame.filter(~pl.col("kept")).sort("_pairs_row")
    new = pl.DataFrame(
        {
            "source_uri": dropped["source_uri"],
            "source_row": dropped["source_row"],
            "source_sha256": dropped["source_sha256"],
            "pair_id": dropped["pair_id"],
            "stage": pl.Series([STAGE] * dropped.height, dtype=pl.String),
            "reason": pl.Series([REASON] * dropped.height, dtype=pl.String),
            "detail": dropped["detail"],
            "raw": pl.Series([None] * dropped.height, dtype=pl.String),
        }
    ).to_arrow()
    schema = contract.schema()
    with pq.ParquetWriter(ctx.out / REJECTIONS_FILE, schema) as writer:
        parent = ctx.ws.dataset_dir(dataset_id) / REJECTIONS_FILE
        if parent.is_file():
            source = pq.ParquetFile(parent)
            for index in range(source.num_row_groups):
                writer.write_table(contract.conform(source.read_row_group(index)).cast(schema))
        writer.write_table(contract.conform(new.cast(schema)))
    return dropped.height


def _write_selection(ctx: StageContext, frame: pl.DataFrame, rule: str) -> None:
    table = frame.sort("split", "row").select(
        "pair_id", "split", "source", pl.lit(rule).alias("rule"), "score", "rank", "kept", "weight"
    )
    contract = load_contract("selection")
    pq.write_table(contract.conform(table.to_arrow()), ctx.out / SELECTION_FILE)


# --- what the selection says about itself ------------------------------------------------------------


def selection_summary(frame: pl.DataFrame, config: SelectionConfig) -> dict[str, Any]:
    """Counts, score quantiles of kept and dropped pairs, per source, and the models' ranking accuracies
    (stored in the manifest and the record, printed by `dpop select`)."""
    selectable = frame.filter(pl.col("_selectable"))
    summary: dict[str, Any] = {
        "rule": config.rule,
        "config": config.as_dict(),
        "pairs": frame.height,
        "selectable": selectable.height,
        "candidates": int(frame["rank"].is_not_null().sum()),
        "kept": int(frame["kept"].sum()),
        "kept_selectable": int(selectable["kept"].sum()),
        "not_selected": int((~frame["kept"]).sum()),
        "score": {
            "kept": _quantiles(selectable.filter(pl.col("kept"))["score"]),
            "dropped": _quantiles(selectable.filter(~pl.col("kept"))["score"]),
        },
        "by_source": _by_source(selectable),
        "target": _total(frame, config, int(frame["rank"].is_not_null().sum())),
    }
    if frame["_group"].n_unique() > 1:  # quotas: what each group had, and kept (a short group shows here)
        summary["groups"] = _by_group(selectable)
    summary.update(_accuracies(frame))
    if config.weight is not None or config.source_weights:
        summary["weight"] = _quantiles(frame.filter(pl.col("kept"))["weight"].cast(pl.Float64))
    return summary


def _quantiles(values: pl.Series) -> dict[str, float | int | None]:
    values = values.drop_nulls()
    if values.len() == 0:
        return {"count": 0}
    points = {"min": 0.0, "p25": 0.25, "median": 0.5, "p75": 0.75, "max": 1.0}
    result: dict[str, float | int | None] = {"count": values.len(), "mean": float(values.mean())}
    result.update({name: float(values.quantile(q, "nearest")) for name, q in points.items()})
    return result


def _by_source(frame: pl.DataFrame) -> dict[str, dict[str, int]]:
    counts = (
        frame.group_by("source")
        .agg(kept=pl.col("kept").sum(), dropped=(~pl.col("kept")).sum())
        .sort("source")
    )
    return {
        row["source"]: {"kept": int(row["kept"]), "dropped": int(row["dropped"])}
        for row in counts.iter_rows(named=True)
    }


def _by_group(frame: pl.DataFrame) -> dict[str, dict[str, int]]:
    counts = frame.group_by("_group").agg(
        candidates=pl.col("rank").is_not_null().sum(), kept=pl.col("kept").sum()
    )
    return {
        row["_group"]: {"candidates": int(row["candidates"]), "kept": int(row["kept"])}
        for row in counts.sort("_group").iter_rows(named=True)
    }


def _accuracies(frame: pl.DataFrame) -> dict[str, Any]:
    """Ranking accuracy per split: the reference's, mean(log πref(y_w) > log πref(y_l)) (Chen et al.),
    and the probe's implicit reward accuracy, mean(Δr > 0)."""
    found: dict[str, Any] = {}
    for name, (chosen, rejected) in (("reference", REF), ("probe", PROBE)):
        if chosen not in frame.columns:
            continue
        if name == "probe" and REF[0] in frame.columns:
            margin = (pl.col(chosen) - pl.col(REF[0])) - (pl.col(rejected) - pl.col(REF[1]))
            key = "probe_reward_accuracy"
        else:
            margin, key = pl.col(chosen) - pl.col(rejected), f"{name}_ranking_accuracy"
        by_split = frame.group_by("split").agg((margin > 0).mean().alias("accuracy")).sort("split")
        found[key] = {split: round(float(value), 6) for split, value in by_split.iter_rows()}
    return found


# --- the convenience entry point ---------------------------------------------------------------------


def select_dataset(
    workspace: Workspace | str | os.PathLike[str],
    dataset_id: str,
    config: SelectionConfig | dict[str, Any] | str | os.PathLike[str] | None,
    scores: list[ModelScores] | tuple[ModelScores, ...] = (),
    executor: Executor = INLINE,
) -> StageRecord:
    """Run the selection through the stage runner (reused when done). The reference defaults to the
    log-probs the dataset's shards store, when the rule needs one and none is given."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    config = load_selection_config(config)
    scores = list(scores)
    if not any(s.role == "reference" for s in scores):
        stored = stored_reference(load_manifest(ws, dataset_id))
        if stored is not None:
            scores.append(stored)
    return run_stage(ws, SelectStage(dataset_id, config, tuple(scores)), executor)
