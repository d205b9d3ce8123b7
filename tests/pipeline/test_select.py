"""`dpop select` (pipeline.select): each rule on hand-built log-probs with a known answer, determinism and
ties, conservation, mixing and weights, the new version's files, SQL views and lineage.

The dataset is a real build (tiny tokenizer, two sources); the models' log-probs are `model_logps`
tables written by hand, so every score is known in advance and no model runs here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.build import build_dataset
from pipeline.catalog import Catalog
from pipeline.config import ConfigError
from pipeline.contracts import load_contract, validate
from pipeline.manifest import load as load_manifest
from pipeline.mix import allocate
from pipeline.select import ModelScores, SelectionConfig, select_dataset
from pipeline.shards import open_split
from pipeline.sql import query
from pipeline.workspace import Workspace
from tests.pipeline._pairs import FakeIngest, pair_table, tiny_tokenizer

SOURCES = {"alpha": 24, "beta": 16}


def _ingest(root: Path, name: str, count: int) -> FakeIngest:
    rows = [
        {
            "prompt": f"{name} question {i}: what is {i} + {i}?",
            "chosen": f"It is {2 * i}." + " Indeed." * (i % 4),
            "rejected": f"It is {2 * i + 1}." + " Surely so, I think." * (i % 3),
            "chosen_score": float(i % 5) if name == "alpha" else None,
            "rejected_score": 1.0 if name == "alpha" else None,
        }
        for i in range(count)
    ]
    uri = f"file:///data/{name}.jsonl"
    table = pair_table(rows, uri)
    table = table.set_column(
        table.schema.get_field_index("source"), "source", pa.array([f"{name}:jsonl"] * count)
    )
    ingest_id = hashlib.sha256(name.encode()).hexdigest()[:16]
    folder = root / "sources" / ingest_id
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "pairs.parquet")
    pq.write_table(load_contract("rejection").schema().empty_table(), folder / "rejections.parquet")
    return FakeIngest(ingest_id, uri, folder / "pairs.parquet", folder / "rejections.parquet")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str, pl.DataFrame]:
    root = tmp_path_factory.mktemp("select")
    ws = Workspace.open(root / "ws")
    ingests = [_ingest(ws.root, name, count) for name, count in SOURCES.items()]
    config = {"split": {"eval_fraction": 0.2}, "shards": {"rows_per_shard": 7}}
    result = build_dataset(ws, config, tiny_tokenizer(root / "tok"), ingests)
    pairs = pl.read_parquet(result.dataset_dir / "pairs.parquet")
    return ws, result.dataset_id, pairs


def write_logps(ws: Workspace, pairs: pl.DataFrame, name: str, chosen, rejected) -> ModelScores:
    """A model_logps table with the given values (functions of the pair's index in pair_id order)."""
    ordered = pairs.sort("pair_id").with_row_index("i")
    index = ordered["i"].to_numpy()
    table = pa.table(
        {
            "pair_id": ordered["pair_id"].to_arrow(),
            "split": ordered["split"].to_arrow(),
            "chosen_logps": pa.array(chosen(index), pa.float32()),
            "rejected_logps": pa.array(rejected(index), pa.float32()),
            "chosen_tokens": pa.array(np.full(len(index), 5), pa.int32()),
            "rejected_tokens": pa.array(np.full(len(index), 5), pa.int32()),
        }
    )
    path = ws.root / "logps" / f"lp-{name}" / "logps.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(load_contract("model_logps").conform(table), path)
    role = "reference" if name.startswith("ref") else "probe"
    return ModelScores(role, f"model-{name}", str(ws.root / name), f"lp-{name}", str(path))


def train_ids(pairs: pl.DataFrame) -> list[str]:
    return sorted(pairs.filter(pl.col("split") == "train")["pair_id"].to_list())


def kept_train(ws: Workspace, record) -> set[str]:
    return set(open_split(ws, record.id, "train").column("pair_id").to_pylist())


# --- the rules, each on a case with a known answer -----------------------------------------------------


def test_reference_difficulty_band_order_and_ranking_accuracy(built):
    ws, dataset_id, pairs = built
    # G = ref_chosen - ref_rejected = i - 10 for the i-th pair in pair_id order
    reference = write_logps(ws, pairs, "ref-a", lambda i: i - 10.0 - 30.0, lambda i: np.full(len(i), -30.0))
    config = {"rule": "reference_difficulty", "band_min": -5, "band_max": 5, "keep_n": 4}
    record = select_dataset(ws, dataset_id, config, [reference])
    ordered = pairs.sort("pair_id").with_row_index("i")
    g = {row["pair_id"]: row["i"] - 10 for row in ordered.iter_rows(named=True)}
    train = train_ids(pairs)
    in_band = [p for p in train if -5 <= g[p] <= 5]
    expected = sorted(in_band, key=lambda p: (abs(g[p]), p))[:4]  # nearest G = 0 first, ties by pair_id
    assert kept_train(ws, record) == set(expected)
    summary = record.summary["selection"]
    expected_accuracy = np.mean([g[p] > 0 for p in train])
    assert summary["reference_ranking_accuracy"]["train"] == pytest.approx(expected_accuracy, abs=1e-6)
    details = query(
        ws,
        f"SELECT detail FROM rejections_history WHERE dataset_id = '{record.id}' AND reason = 'not_selected'",
    )
    assert any("outside the band [-5, 5]" in d for d in details["detail"])


def test_small_gap_keeps_the_smallest_signed_implicit_reward_gaps(built):
    ws, dataset_id, pairs = built
    reference = write_logps(
        ws, pairs, "ref-b", lambda i: np.full(len(i), -20.0), lambda i: np.full(len(i), -20.0)
    )
    # probe: Δr = β((c - ref_c) - (r - ref_r)) = 0.1 * (i % 7 - 3)
    probe = write_logps(ws, pairs, "probe-b", lambda i: -20.0 + (i % 7) - 3, lambda i: np.full(len(i), -20.0))
    record = select_dataset(ws, dataset_id, {"rule": "small_gap", "keep_n": 5}, [reference, probe])
    ordered = pairs.sort("pair_id").with_row_index("i")
    gap = {row["pair_id"]: 0.1 * (row["i"] % 7 - 3) for row in ordered.iter_rows(named=True)}
    expected = sorted(train_ids(pairs), key=lambda p: (round(gap[p], 6), p))[:5]
    assert kept_train(ws, record) == set(expected)
    scores = query(ws, f"SELECT pair_id, score, rank, kept FROM selections WHERE dataset_id = '{record.id}'")
    by_id = {r["pair_id"]: r for r in scores.iter_rows(named=True)}
    for pair in expected:
        assert by_id[pair]["score"] == pytest.approx(gap[pair], abs=1e-5) and by_id[pair]["kept"]


def test_margin_clips_both_margins_to_unit_and_fuses_them(built):
    ws, dataset_id, pairs = built
    reference = write_logps(
        ws, pairs, "ref-c", lambda i: np.full(len(i), -10.0), lambda i: np.full(len(i), -10.0)
    )
    # implicit margin m_im = 0.1 * (i - 8): clipped to [0, 1]
    probe = write_logps(ws, pairs, "probe-c", lambda i: -10.0 + (i - 8.0), lambda i: np.full(len(i), -10.0))
    record = select_dataset(ws, dataset_id, {"rule": "margin", "keep": 0.25}, [reference, probe])
    ordered = pairs.sort("pair_id").with_row_index("i")
    expected_scores = {}
    for row in ordered.iter_rows(named=True):
        implicit = min(max(0.1 * (row["i"] - 8), 0.0), 1.0)
        margin = row["score_margin"]  # alpha: chosen_score - 1; beta: no scores
        external = None if margin is None else min(max(margin, 0.0), 1.0)
        expected_scores[row["pair_id"]] = implicit if external is None else implicit * external
    train = train_ids(pairs)
    k = round(0.25 * len(train))
    expected = sorted(train, key=lambda p: (-expected_scores[p], p))[:k]
    assert kept_train(ws, record) == set(expected)
    got = query(ws, f"SELECT pair_id, score FROM selections WHERE dataset_id = '{record.id}'")
    for pair, score in got.iter_rows():
        assert score == pytest.approx(expected_scores[pair], abs=1e-5)


def test_low_edit_and_edit_quota(built):
    ws, dataset_id, pairs = built
    train = pairs.filter(pl.col("split") == "train")
    record = select_dataset(ws, dataset_id, {"rule": "low_edit", "keep_n": 6}, [])
    expected = train.sort(["edit_ratio", "pair_id"]).head(6)["pair_id"].to_list()
    assert kept_train(ws, record) == set(expected)
    edges = (0.0, 0.2, 0.3, 1.0)
    quota = select_dataset(
        ws,
        dataset_id,
        {"rule": "edit_quota", "keep_n": 8, "edit_buckets": edges, "edit_shares": (0.5, 0.25, 0.25)},
        [],
    )
    kept = train.filter(pl.col("pair_id").is_in(list(kept_train(ws, quota))))
    buckets = np.searchsorted(np.asarray(edges[1:-1]), kept["edit_ratio"].to_numpy(), side="right")
    sizes = np.bincount(
        np.searchsorted(np.asarray(edges[1:-1]), train["edit_ratio"].to_numpy(), side="right"), minlength=3
    )
    targets = allocate({b: int(sizes[b]) for b in range(3)}, {0: 0.5, 1: 0.25, 2: 0.25}, 8)
    assert np.bincount(buckets, minlength=3).tolist() == [targets[b] for b in range(3)]


def test_sql_rule_and_ties_broken_by_pair_id(built):
    ws, dataset_id, pairs = built
    record = select_dataset(ws, dataset_id, {"rule": "sql", "score": "1", "keep_n": 5}, [])
    assert kept_train(ws, record) == set(train_ids(pairs)[:5])  # every score equal: the smallest pair ids
    longest = select_dataset(
        ws, dataset_id, {"rule": "sql", "score": "len_rejected_chars - len_chosen_chars", "keep_n": 3}, []
    )
    train = pairs.filter(pl.col("split") == "train").with_columns(
        d=pl.col("len_rejected_chars") - pl.col("len_chosen_chars")
    )
    expected = train.sort(["d", "pair_id"], descending=[True, False]).head(3)["pair_id"].to_list()
    assert kept_train(ws, longest) == set(expected)


def test_random_rule_is_seeded_and_mix_holds_its_proportions(built):
    ws, dataset_id, pairs = built
    first = select_dataset(ws, dataset_id, {"rule": "random", "keep": 0.5, "seed": 1}, [])
    again = select_dataset(ws, dataset_id, {"rule": "random", "keep": 0.5, "seed": 1}, [])
    other = select_dataset(ws, dataset_id, {"rule": "random", "keep": 0.5, "seed": 2}, [])
    assert again.id == first.id and again.reused and kept_train(ws, again) == kept_train(ws, first)
    assert kept_train(ws, other) != kept_train(ws, first)
    mixed = select_dataset(
        ws, dataset_id, {"rule": "random", "keep_n": 12, "mix": {"alpha": 3, "beta": 1}}, []
    )
    sources = pl.read_parquet(ws.dataset_dir(mixed.id) / "pairs.parquet").filter(pl.col("split") == "train")
    assert sources.group_by("source").len().sort("source")["len"].to_list() == [9, 3]


# --- the new version -----------------------------------------------------------------------------------


def test_selected_version_conserves_rows_and_records_lineage(built):
    ws, dataset_id, pairs = built
    reference = write_logps(ws, pairs, "ref-d", lambda i: -i * 1.0, lambda i: np.full(len(i), -12.0))
    config = {
        "rule": "reference_difficulty",
        "keep": 0.5,
        "weight": "1 + rank / 100.0",
        "source_weights": {"beta": 2.0},
    }
    record = select_dataset(ws, dataset_id, config, [reference])
    parent = load_manifest(ws, dataset_id)
    manifest = load_manifest(ws, record.id)
    folder = ws.dataset_dir(record.id)
    # conservation: every parent row is kept or a not_selected rejection; eval is kept whole
    kept, dropped = manifest.rows, record.counts["not_selected"]
    assert kept + dropped == parent.rows and manifest.split_rows("eval") == parent.split_rows("eval")
    assert manifest.funnel[-1] == ("select", parent.rows, dropped, "not_selected")
    assert list(manifest.funnel[:-1]) == list(parent.funnel)
    rejections = pq.read_table(folder / "rejections.parquet")
    validate(rejections, "rejection")
    assert (
        rejections.num_rows
        == pq.read_metadata(ws.dataset_dir(dataset_id) / "rejections.parquet").num_rows + dropped
    )
    assert pl.read_parquet(folder / "pairs.parquet").height == kept
    # the shards carry the weights: rank-based times 2 for beta
    table = open_split(ws, record.id, "train")
    selection = pl.read_parquet(folder / "selection.parquet")
    validate(pq.read_table(folder / "selection.parquet"), "selection")
    by_id = {r["pair_id"]: r for r in selection.iter_rows(named=True)}
    sources = dict(pairs.select("pair_id", "source").iter_rows())
    for pair, weight in zip(
        table.column("pair_id").to_pylist(), table.column("weight").to_pylist(), strict=True
    ):
        factor = 2.0 if sources[pair].startswith("beta") else 1.0
        assert weight == pytest.approx((1 + by_id[pair]["rank"] / 100.0) * factor, rel=1e-6)
    # lineage: the dataset, the reference model and its log-prob table are parents
    assert set(Catalog(ws).parents(record.id)) == {
        (dataset_id, "selected_from"),
        ("model-ref-d", "reference_model"),
        ("lp-ref-d", "scored_with"),
    }
    assert record.rejected_by_reason == {"not_selected": dropped}


def test_sql_views_show_what_was_left_out_and_why(built, tmp_path):
    ws, dataset_id, pairs = built
    record = select_dataset(ws, dataset_id, {"rule": "low_edit", "keep_n": 4}, [])
    # the selection is the newest version: `rejections` (current) lists the pairs it left out
    left_out = query(ws, "SELECT count(*) AS n FROM rejections WHERE reason = 'not_selected'")["n"][0]
    assert left_out == record.counts["not_selected"]
    history = query(ws, f"SELECT count(*) AS n FROM pairs_history WHERE dataset_id = '{record.id}'")["n"][0]
    assert history == load_manifest(ws, record.id).rows
    row = query(
        ws, f"SELECT pairs_dataset_id, reference_model_id FROM datasets WHERE dataset_id = '{record.id}'"
    )
    assert row["pairs_dataset_id"][0] == record.id  # a selection holds its own pairs
    shards = query(
        ws, f"SELECT count(*) AS n, count(weight) AS w FROM shards WHERE dataset_id = '{dataset_id}'"
    )
    assert (
        shards["n"][0] == load_manifest(ws, dataset_id).rows and shards["w"][0] == 0
    )  # no weight column there


# --- errors: one line naming what is wrong -------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "scores", "message"),
    [
        ({"rule": "small_gap"}, (), "needs the log-probs of the reference and probe model"),
        ({"rule": "random", "mix": {"gamma": 1.0}}, (), "'mix' names no source of this dataset: 'gamma'"),
        ({"rule": "sql", "score": "no_such_column"}, (), "'score': DuckDB cannot evaluate 'no_such_column'"),
        ({"rule": "sql", "score": "1); DROP TABLE pairs; --"}, (), "'score'"),
        ({"rule": "random", "weight": "-1"}, (), "'weight' gives pair"),
        ({"rule": "random", "keep": 0.5, "keep_n": 3}, (), "keep or keep_n, not both"),
        ({"rule": "nope"}, (), "'rule'"),
        ({"rule": "edit_quota", "edit_buckets": (0.0, 0.5, 0.4, 1.0)}, (), "must rise strictly"),
    ],
)
def test_bad_configs_fail_in_one_line(built, config, scores, message):
    ws, dataset_id, _ = built
    with pytest.raises((ConfigError, ValueError)) as error:
        select_dataset(ws, dataset_id, config, list(scores))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_log_probs_name_the_pair(built):
    ws, dataset_id, pairs = built
    partial = write_logps(ws, pairs.head(3), "ref-e", lambda i: -i * 1.0, lambda i: -i * 1.0)
    with pytest.raises(RuntimeError, match="lack pair .* and .* more: compute them"):
        select_dataset(ws, dataset_id, {"rule": "reference_difficulty"}, [partial])


# --- properties ----------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=5),
    shares=st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=5, max_size=5),
    total=st.one_of(st.none(), st.integers(0, 200)),
)
def test_allocate_never_exceeds_sizes_or_total_and_follows_shares(sizes, shares, total):
    groups = {f"g{i}": size for i, size in enumerate(sizes)}
    weights = {f"g{i}": shares[i] for i in range(len(sizes))}
    counts = allocate(groups, weights, total)
    assert set(counts) == set(groups)
    assert all(0 <= counts[g] <= groups[g] for g in groups)
    positive = {g: w for g, w in weights.items() if w > 0}
    if total is not None:
        assert sum(counts.values()) <= total
        norm = sum(positive.values())
        for g in groups:  # uncapped groups get their share, to one pair
            if g in positive and counts[g] < groups[g]:
                assert counts[g] >= total * positive[g] / norm - 1
    elif positive:  # no total: the largest total every group can fill, in proportion
        assert all(counts[g] <= groups[g] for g in positive)


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.integers(-3, 3), min_size=40, max_size=40), keep_n=st.integers(1, 40))
def test_any_scores_keep_exactly_the_top_k_with_ties_by_pair_id(built, values, keep_n):
    from pipeline.select import candidate_frame, choose

    ws, dataset_id, pairs = built
    frame = candidate_frame(ws, dataset_id, [])
    scores = dict(zip(sorted(frame["pair_id"].to_list()), values, strict=False))
    frame = frame.with_columns(v=pl.col("pair_id").replace_strict(scores, return_dtype=pl.Float64))
    chosen = choose(frame, SelectionConfig(rule="sql", score="v", keep_n=keep_n))
    train = chosen.filter(pl.col("split") == "train")
    k = min(keep_n, train.height)
    expected = train.sort([-pl.col("v"), "pair_id"]).head(k)["pair_id"].to_list()
    assert sorted(train.filter("kept")["pair_id"].to_list()) == sorted(expected)
    assert chosen.filter(pl.col("split") == "eval")["kept"].all()
