"""Preference evaluation as a stage: a model against its reference on one split of a dataset version.

`PreferenceEvalStage(model, reference, dataset_id, split="eval", beta=0.1, precision="float32", ws=…)`
runs both models over the split's pairs (no grad, longest first in token-budget batches, in the
precision the policy trained in, as `dpop.refs.LogpsStage`) through `dpop.logps` (the trainer's
collator and per-token log-probs), and writes

    <ws>/evals/<eval_id>/pairs.parquet     contract pair_eval: per pair, both models' summed log-probs,
                                           Δ log p(chosen), the reward margin, correct, the mean per-token
                                           Δ before and after the first edit, the Δ of every chosen
                                           token, the source, the edit ratio and its quartile bucket
    <ws>/evals/<eval_id>/metrics.parquet   contract eval_metric: the metrics below, overall ("all"), per
                                           source and per edit bucket

Identity: the inputs are the evaluated model (`evaluated_model`), the reference (`reference_model`) and
the eval set (`evaluated_on`), whose id `evalset-<hash>` is the content of the split, its pair ids and
token ids in order. It ignores the reference columns and the version that carries the pairs, so a
dataset and its `-ref-` version have the same eval set, and two models evaluated on one eval set were
scored on identical pairs (a `dpop run --losses` comparison). The eval id is `eval-<hash>` of those
ids, β and the precision. Every row names its eval, eval set and model: the files describe themselves.

Metrics (TRL's names where TRL has one; Δ = policy − reference, per pair unless said):

    rewards/accuracies            share of pairs whose reward margin is > 0 (a margin of 0 is not correct)
    rewards/margins               mean β·(Δ log p(chosen) − Δ log p(rejected))
    logps/chosen, logps/rejected  mean summed log-probs under the policy (ref_logps/…: the reference)
    logps/chosen_delta            mean Δ log p(chosen): below 0, the preferred answer became less likely
    logps/rejected_delta          mean Δ log p(rejected)
    logps/chosen_pre_edit_delta   mean Δ per chosen token before the first edit, pooled over the tokens
    logps/chosen_post_edit_delta  the same from the first edit on (the trainer pools its
                                  logps/chosen_pre_edit and logps/chosen_post_edit the same way, so these
                                  are the policy's values minus the reference's); n: pairs with such tokens
    dpop/penalty_active           share of pairs with Δ log p(chosen) < 0: where DPOP's penalty is on

Edit buckets are the quartiles of the edit ratio within the eval set, closed on the right (`q1 [a, b]`,
`q2 (b, c]`, …, as `pandas.qcut`): equal ratios share a bucket, so a bucket can be empty.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dpop.data import ShardDataset
from dpop.logps_cache import pair_digests
from dpop.model_io import (
    Precision,
    check_tokenizer,
    load_causal_lm,
    model_artifact,
    require_model_dir,
    require_safetensors,
)
from dpop.model_logps import DEFAULT_BATCH_SIZE, DEFAULT_TOKEN_BUDGET, pad_token_id, token_budget_batches
from pipeline.contracts import load_contract
from pipeline.evalset import Overlap, eval_prompt_keys, overlap
from pipeline.shards import load_manifest, open_split
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

STAGE_NAME = "eval"
STAGE_VERSION = 2  # 2: the record's summary holds the eval set's overlap with the training split
PAIRS_FILE, METRICS_FILE = "pairs.parquet", "metrics.parquet"
PAIR_CONTRACT, METRIC_CONTRACT = "pair_eval", "eval_metric"
MODEL, REFERENCE, EVAL_SET = "evaluated_model", "reference_model", "evaluated_on"
CHECKED_AGAINST = "checked_against"
UNKNOWN_SOURCE = "unknown"  # the source group of pairs whose dataset holds no pairs.parquet row for them
KIND = "preference"


# --- the eval set ------------------------------------------------------------------------------------


def eval_set_id(shards: pa.Table) -> str:
    """`evalset-<hash>` of the rows' pair ids and token ids, in order (not of the reference columns)."""
    digest = hashlib.sha256()
    for pair, tokens in zip(shards.column("pair_id").to_pylist(), pair_digests(shards), strict=True):
        digest.update(pair.encode() + b"\0" + tokens)  # token digests have a fixed size
    return f"evalset-{digest.hexdigest()[:16]}"


def eval_set_artifact(ws: Workspace, dataset_id: str, split: str = "eval") -> Artifact:
    """The split as an eval set: its content id, the folder of the version it was read from, its rows."""
    splits = load_manifest(ws, dataset_id).get("splits", {})
    if split not in splits:
        raise ValueError(
            f"dataset {dataset_id} has no {split!r} split (it has: {', '.join(splits) or 'none'})"
        )
    shards = open_split(ws, dataset_id, split)  # checked against the manifest's sizes and sha256
    folder = workspace_path(ws, ws.dataset_dir(dataset_id))
    meta = {"dataset_id": dataset_id, "split": split}
    return Artifact(eval_set_id(shards), "eval_set", folder, rows=shards.num_rows, meta=meta)


# --- the forward passes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitScores:
    """One model's log-probs of a split, in row order: summed per answer, and per chosen token."""

    chosen: np.ndarray  # (n,) float32
    rejected: np.ndarray  # (n,) float32
    chosen_tokens: list[np.ndarray]  # n arrays: log p of each chosen response token


def _load_forward(model_path: Path, precision: Precision, trust_remote_code: bool) -> tuple[Any, Any, int]:
    """(forward under the precision's autocast, device, pad token id): as `LogpsStage` loads a model."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(model_path, dtype=precision.torch_dtype(), trust_remote_code=trust_remote_code)
    model.to(device).eval()
    return precision.forward_of(model, device.type), device, pad_token_id(model_path)


def eval_batches(dataset: ShardDataset, batch_size: int | None = None) -> list[np.ndarray]:
    """Row indices per forward pass: longest first (little padding; an out-of-memory shows at once),
    at most `batch_size` pairs and `DEFAULT_TOKEN_BUDGET` padded tokens each."""
    lengths = dataset.lengths()
    order = np.argsort(-lengths, kind="stable")
    return token_budget_batches(order, lengths, batch_size or DEFAULT_BATCH_SIZE, DEFAULT_TOKEN_BUDGET)


def score_split(
    model_path: Path,
    dataset: ShardDataset,
    batches: list[np.ndarray],
    precision: Precision,
    trust_remote_code: bool = False,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> SplitScores:
    """`model_path`'s log-probs of every row of `dataset`, one no-grad forward pass per batch
    (`progress(pairs done, pairs)` after each)."""
    import torch

    from dpop.logps import PairCollator, pair_logps

    forward, device, pad = _load_forward(model_path, precision, trust_remote_code)
    collate = PairCollator(pad_token_id=pad)
    chosen = np.zeros(len(dataset), np.float32)
    rejected = np.zeros(len(dataset), np.float32)
    tokens: list[np.ndarray] = [np.zeros(0, np.float32)] * len(dataset)
    done, total = 0, sum(len(indices) for indices in batches)
    with torch.inference_mode():
        for indices in batches:
            batch = collate([dataset[int(index)] for index in indices])
            batch = {key: value.to(device) for key, value in batch.items()}
            result = pair_logps(forward, batch)
            chosen[indices] = result.chosen.float().cpu().numpy()
            rejected[indices] = result.rejected.float().cpu().numpy()
            per_sequence = _per_sequence(result.per_token, batch["score_sequence"], 2 * len(indices))
            for position, index in enumerate(indices):  # chosen sequences come first (dpop.logps)
                tokens[int(index)] = per_sequence[position]
            done += len(indices)
            progress(done, total)
    return SplitScores(chosen, rejected, tokens)


def _per_sequence(per_token: Any, sequence: Any, sequences: int) -> list[np.ndarray]:
    """The flat scored-token values cut per sequence (they are listed sequence by sequence)."""
    import torch

    counts = torch.bincount(sequence, minlength=sequences).cpu().numpy()
    return np.split(per_token.float().cpu().numpy(), np.cumsum(counts)[:-1])


# --- per pair ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairValues:
    """Per pair (row order) what both files are made of: Δ = policy − reference."""

    policy: SplitScores
    reference: SplitScores
    beta: float
    common_prefix: np.ndarray  # (n,) int

    @cached_property
    def delta_chosen(self) -> np.ndarray:
        return self.policy.chosen.astype(np.float64) - self.reference.chosen

    @cached_property
    def delta_rejected(self) -> np.ndarray:
        return self.policy.rejected.astype(np.float64) - self.reference.rejected

    @cached_property
    def margin(self) -> np.ndarray:
        return self.beta * (self.delta_chosen - self.delta_rejected)

    @cached_property
    def token_delta(self) -> list[np.ndarray]:
        return [p - r for p, r in zip(self.policy.chosen_tokens, self.reference.chosen_tokens, strict=True)]

    @cached_property
    def edit_sums(self) -> dict[str, np.ndarray]:
        """Σ Δ and token counts of the chosen tokens before (`pre`) and from (`post`) the first edit."""
        cut = [min(int(c), len(d)) for c, d in zip(self.common_prefix, self.token_delta, strict=True)]
        pieces = [(d[:c], d[c:]) for d, c in zip(self.token_delta, cut, strict=True)]
        return {
            "pre_sum": np.array([pre.sum(dtype=np.float64) for pre, _ in pieces], dtype=np.float64),
            "pre_tokens": np.array([len(pre) for pre, _ in pieces], dtype=np.int64),
            "post_sum": np.array([post.sum(dtype=np.float64) for _, post in pieces], dtype=np.float64),
            "post_tokens": np.array([len(post) for _, post in pieces], dtype=np.int64),
        }


def edit_buckets(ratios: np.ndarray) -> list[str]:
    """Each ratio's quartile within `ratios`, as a label with its bounds (module doc)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    if len(ratios) == 0:
        return []
    bounds = np.quantile(ratios, [0.0, 0.25, 0.5, 0.75, 1.0])
    index = np.clip(np.searchsorted(bounds[1:4], ratios, side="left"), 0, 3)
    labels = [f"q{q + 1} {'[' if q == 0 else '('}{bounds[q]:.3g}, {bounds[q + 1]:.3g}]" for q in range(4)]
    return [labels[q] for q in index]


def pair_sources(ws: Workspace, dataset_id: str, split: str, pair_ids: list[str]) -> dict[str, list]:
    """source, source_uri and source_row per pair from the version's pairs.parquet (nulls where it has
    no row for a pair, or no such file: a dataset written outside a build)."""
    path = ws.dataset_dir(dataset_id) / "pairs.parquet"
    found: dict[str, tuple] = {}
    if path.is_file():
        columns = ["pair_id", "source", "source_uri", "source_row", "split"]
        table = pq.read_table(path, columns=columns).filter(pc.field("split") == split)
        for row in zip(*(table.column(c).to_pylist() for c in columns[:4]), strict=True):
            found.setdefault(row[0], row[1:])  # the first row of a pair id, as the build keeps it
    rows = [found.get(pair, (None, None, None)) for pair in pair_ids]
    return {name: [row[i] for row in rows] for i, name in enumerate(("source", "source_uri", "source_row"))}


def _mean_or_none(total: np.ndarray, count: np.ndarray) -> list[float | None]:
    return [float(t / c) if c else None for t, c in zip(total, count, strict=True)]


def _float_lists(arrays: list[np.ndarray]) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int32)
    values = np.concatenate(arrays).astype(np.float32) if arrays else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()))


def pairs_table(
    ids: dict[str, str], shards: pa.Table, values: PairValues, groups: dict[str, list]
) -> pa.Table:
    """The pair_eval rows: `ids` (eval, eval set, model, reference), the shards' columns, the values."""
    count, sums = shards.num_rows, values.edit_sums
    columns: dict[str, Any] = {name: [value] * count for name, value in ids.items()}
    columns.update(
        pair_id=shards.column("pair_id"),
        source=groups["source"],
        source_uri=groups["source_uri"],
        source_row=groups["source_row"],
        edit_ratio=shards.column("edit_ratio"),
        edit_bucket=groups["edit_bucket"],
        chosen_tokens=pc.list_value_length(shards.column("chosen_ids")),
        common_prefix_len=shards.column("common_prefix_len"),
        policy_chosen_logps=values.policy.chosen,
        policy_rejected_logps=values.policy.rejected,
        ref_chosen_logps=values.reference.chosen,
        ref_rejected_logps=values.reference.rejected,
        delta_chosen_logps=values.delta_chosen.astype(np.float32),
        reward_margin=values.margin.astype(np.float32),
        correct=values.margin > 0,
        delta_pre_edit=_mean_or_none(sums["pre_sum"], sums["pre_tokens"]),
        delta_post_edit=_mean_or_none(sums["post_sum"], sums["post_tokens"]),
        chosen_token_delta=_float_lists(values.token_delta),
    )
    contract = load_contract(PAIR_CONTRACT)
    return contract.conform(pa.table({name: columns[name] for name in contract.columns}))


# --- metrics -----------------------------------------------------------------------------------------


def group_metrics(values: PairValues, mask: np.ndarray) -> Iterator[tuple[str, float | None, int]]:
    """(metric, value, n) of the pairs in `mask` (module doc)."""
    pairs = int(mask.sum())
    means = {
        "rewards/accuracies": values.margin > 0,
        "rewards/margins": values.margin,
        "logps/chosen": values.policy.chosen,
        "logps/rejected": values.policy.rejected,
        "ref_logps/chosen": values.reference.chosen,
        "ref_logps/rejected": values.reference.rejected,
        "logps/chosen_delta": values.delta_chosen,
        "logps/rejected_delta": values.delta_rejected,
        "dpop/penalty_active": values.delta_chosen < 0,
    }
    for name, array in means.items():
        yield name, float(np.mean(array[mask], dtype=np.float64)) if pairs else None, pairs
    sums = values.edit_sums
    for side in ("pre", "post"):
        tokens = sums[f"{side}_tokens"][mask]
        total = float(sums[f"{side}_sum"][mask].sum())
        value = total / int(tokens.sum()) if tokens.sum() else None
        yield f"logps/chosen_{side}_edit_delta", value, int((tokens > 0).sum())


def metrics_table(ids: dict[str, str], values: PairValues, groups: dict[str, list]) -> pa.Table:
    """The eval_metric rows: every metric overall, per source and per edit bucket."""
    sources = np.array([s if s is not None else UNKNOWN_SOURCE for s in groups["source"]], dtype=object)
    buckets = np.array(groups["edit_bucket"], dtype=object)
    every = [("all", "all", np.ones(len(buckets), dtype=bool))]
    every += [("source", s, sources == s) for s in sorted(set(sources))]
    every += [("edit_bucket", b, buckets == b) for b in sorted(set(buckets))]
    rows = [
        {**ids, "kind": KIND, "metric": metric, "group_kind": kind, "group": group, "value": value, "n": n}
        for kind, group, mask in every
        for metric, value, n in group_metrics(values, mask)
    ]
    contract = load_contract(METRIC_CONTRACT)
    return contract.conform(pa.Table.from_pylist(rows, schema=contract.schema()))


# --- the stage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceEvalStage(Stage):
    """`model` against `reference` on the `split` of `dataset_id` (in workspace `ws`), at β `beta`, in
    `precision` (the policy's training precision). `batch_size` and `trust_remote_code` change how it
    runs, not what it writes."""

    name = STAGE_NAME
    version = STAGE_VERSION
    id_prefix = "eval"

    model: Path
    reference: Path
    dataset_id: str
    split: str = "eval"
    beta: float = 0.1
    precision: Precision | str = "float32"
    batch_size: int | None = None
    trust_remote_code: bool = False
    # The dataset whose training split the eval set is checked against (default: `dataset_id`'s own).
    # Given, it is an input (`checked_against`): the champion evaluated on a candidate's eval set.
    train_dataset_id: str | None = None
    ws: Workspace = field(kw_only=True)  # where the dataset is: the eval set's id reads its tokens

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", require_model_dir(self.model))
        object.__setattr__(self, "reference", require_model_dir(self.reference))
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        if not float(self.beta) > 0:
            raise ValueError(f"beta must be > 0 (the reward scale), got {self.beta}")
        object.__setattr__(self, "beta", float(self.beta))

    @cached_property
    def model_artifact(self) -> Artifact:
        return model_artifact(self.model)

    @cached_property
    def reference_artifact(self) -> Artifact:
        return model_artifact(self.reference)

    @cached_property
    def eval_set(self) -> Artifact:
        return eval_set_artifact(self.ws, self.dataset_id, self.split)

    def inputs(self) -> list[Input]:
        inputs = [
            Input(self.model_artifact, MODEL),
            Input(self.reference_artifact, REFERENCE),
            Input(self.eval_set, EVAL_SET),
        ]
        if self.train_dataset_id and self.train_dataset_id != self.dataset_id:
            path = workspace_path(self.ws, self.ws.dataset_dir(self.train_dataset_id))
            inputs.append(Input(Artifact(self.train_dataset_id, "dataset", path), CHECKED_AGAINST))
        return inputs

    def overlap(self, pair_ids: list[str]) -> Overlap:
        """Eval pairs and prompts that the training split also holds (0 and 0 for a fair eval)."""
        train = self.train_dataset_id or self.dataset_id
        folder = self.ws.dataset_dir(self.dataset_id)
        prompts = eval_prompt_keys(folder, self.split, pair_ids)
        return overlap(self.ws.dataset_dir(train), train, pair_ids, prompts)

    def config(self) -> dict[str, Any]:
        return {"beta": self.beta, "dtype": self.precision.label}

    def folder(self, ws: Workspace) -> Path:
        return ws.eval_dir(self.id)

    def label(self) -> str:
        return f"eval {self.model_artifact.id} vs {self.reference_artifact.id} ({self.split} split)"

    def check(self, ws: Workspace) -> None:
        """What fails before any work, in one line: a missing split or dataset, an empty split, a model
        whose tokenizer is not the shards' one, pickled weights."""
        manifest = load_manifest(ws, self.dataset_id)
        if self.eval_set.rows == 0:
            raise ValueError(
                f"the {self.split} split of dataset {self.dataset_id} is empty: nothing to evaluate"
            )
        for path in (self.model, self.reference):
            check_tokenizer(manifest, path)
            require_safetensors(path)

    def run(self, ctx: StageContext) -> StageOutput:
        self.check(ctx.ws)
        dataset = ShardDataset.open(ctx.ws, self.dataset_id, self.split)
        values = self._values(ctx, dataset)
        ids = {
            "eval_id": self.id,
            "eval_set_id": self.eval_set.id,
            "model_id": self.model_artifact.id,
            "reference_id": self.reference_artifact.id,
        }
        shards = dataset.table
        groups = pair_sources(ctx.ws, self.dataset_id, self.split, shards.column("pair_id").to_pylist())
        groups["edit_bucket"] = edit_buckets(shards.column("edit_ratio").to_numpy())
        pairs = pairs_table(ids, shards, values, groups)
        metric_ids = {key: value for key, value in ids.items() if key != "reference_id"}
        metrics = metrics_table(metric_ids, values, groups)
        pq.write_table(pairs, ctx.out / PAIRS_FILE)
        pq.write_table(metrics, ctx.out / METRICS_FILE)
        found = self.overlap(shards.column("pair_id").to_pylist())
        return self._output(ctx, pairs.num_rows, metrics, found)

    def _values(self, ctx: StageContext, dataset: ShardDataset) -> PairValues:
        """Both models' log-probs over the same batches; the reference's pass is skipped when it is the
        model itself (a step-0 policy)."""
        batches = eval_batches(dataset, self.batch_size)
        passes = 1 if self.model_artifact.id == self.reference_artifact.id else 2

        def score(path: Path, which: int) -> SplitScores:
            model = ("policy", "reference")[which]
            report = lambda done, total: ctx.progress(done, total, f"{model} model ({which + 1}/{passes})")  # noqa: E731
            return score_split(path, dataset, batches, self.precision, self.trust_remote_code, report)

        policy = score(self.model, 0)
        reference = policy if passes == 1 else score(self.reference, 1)
        common_prefix = dataset.table.column("common_prefix_len").to_numpy()
        return PairValues(policy, reference, self.beta, common_prefix)

    def _output(self, ctx: StageContext, rows: int, metrics: pa.Table, found: Overlap) -> StageOutput:
        overall = {
            metric: value
            for metric, kind, value in zip(
                metrics.column("metric").to_pylist(),
                metrics.column("group_kind").to_pylist(),
                metrics.column("value").to_pylist(),
                strict=True,
            )
            if kind == "all"
        }
        meta = {
            "model": self.model_artifact.id,
            "reference": self.reference_artifact.id,
            "eval_set": self.eval_set.id,
            "dataset_id": self.dataset_id,
            "split": self.split,
            "beta": self.beta,
            "dtype": self.precision.label,
        }
        part_of = ((self.id, "part_of"),)
        outputs = [
            Artifact(self.id, "eval", workspace_path(ctx.ws, ctx.folder), rows, meta=meta),
            Artifact(
                f"{self.id}-pairs", "pair_eval", ctx.path(PAIRS_FILE), rows, PAIR_CONTRACT, parents=part_of
            ),
            Artifact(
                f"{self.id}-metrics",
                "eval_metric",
                ctx.path(METRICS_FILE),
                metrics.num_rows,
                METRIC_CONTRACT,
                parents=part_of,
            ),
        ]
        return StageOutput(
            outputs=outputs,
            counts={"pairs": rows, "metrics": metrics.num_rows},
            summary={**meta, "kind": KIND, "metrics": overall, "overlap": found.as_dict()},
        )


def evaluate(
    workspace: Workspace | str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    dataset_id: str,
    split: str = "eval",
    beta: float = 0.1,
    precision: Precision | str = "float32",
    batch_size: int | None = None,
    executor: Executor = INLINE,
    train_dataset_id: str | None = None,
) -> StageRecord:
    """Evaluate `model_path` against `reference_path` through the stage runner (reused when done);
    checked first, so a bad input fails in one line before any model loads."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    stage = PreferenceEvalStage(
        Path(model_path),
        Path(reference_path),
        dataset_id,
        split,
        beta,
        precision,
        batch_size,
        train_dataset_id=train_dataset_id,
        ws=ws,
    )
    stage.check(ws)
    return run_stage(ws, stage, executor)


def read_metrics(ws: Workspace, record: StageRecord) -> pa.Table:
    """The eval_metric table of an eval record."""
    return pq.read_table(record.output("eval_metric").location(ws))


def read_pairs(ws: Workspace, record: StageRecord) -> pa.Table:
    """The pair_eval table of an eval record."""
    return pq.read_table(record.output("pair_eval").location(ws))
