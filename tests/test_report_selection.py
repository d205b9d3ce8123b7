"""The report's selection section on real selections (`SelectStage` on a real tiny build, log-prob tables
written by hand so every G is known): its numbers are the selection's, the caption names the rule, the
figures exist, a selection of a selection shows both, a comparison shows each once, and a run on a
dataset made by no selection has no such section. The runs are run folders that have not trained (the
report reads files; nothing here needs a model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.report import build_report, gather
from pipeline.report.selection import (
    by_source,
    effective_size,
    group_rows,
    group_targets,
    images,
    section,
    sentences,
)
from pipeline.select import select_dataset
from pipeline.sql import query
from pipeline.workspace import Workspace
from tests.pipeline.test_select import SOURCES, _ingest, write_logps

# G = log πref(y_w) − log πref(y_l) = i − 12 for the i-th pair in pair_id order: the first 12 ranked wrong
REF_CHOSEN, REF_REJECTED = (lambda i: i - 12.0 - 30.0), (lambda i: np.full(len(i), -30.0))


@pytest.fixture(scope="module")
def selected(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A build of two sources; `first`: small_gap with a band, keep_n and weights, from hand-written
    reference and probe tables; `second`: random with quotas on top of it (beta's quota is short)."""
    from pipeline.build import build_dataset
    from tests.pipeline._pairs import tiny_tokenizer

    root = tmp_path_factory.mktemp("report-selection")
    ws = Workspace.open(root / "ws")
    ingests = [_ingest(ws.root, name, count) for name, count in SOURCES.items()]
    config = {"split": {"eval_fraction": 0.2}, "shards": {"rows_per_shard": 7}}
    built = build_dataset(ws, config, tiny_tokenizer(root / "tok"), ingests)
    pairs = pl.read_parquet(built.dataset_dir / "pairs.parquet")
    reference = write_logps(ws, pairs, "ref-r", REF_CHOSEN, REF_REJECTED)
    # Δr = 0.1·(i % 9 − 4): ties in plenty, broken by pair_id
    probe = write_logps(ws, pairs, "probe-r", lambda i: REF_CHOSEN(i) + (i % 9) - 4, REF_REJECTED)
    first = select_dataset(
        ws,
        built.dataset_id,
        {
            "rule": "small_gap",
            "band_min": -0.3,
            "keep_n": 10,
            "weight": "1 + rank / 10.0",
        },
        [reference, probe],
    )
    second = select_dataset(
        ws, first.id, {"rule": "random", "quotas": {"alpha": 4, "beta": 100}, "seed": 3}, []
    )
    g = dict(zip(pairs.sort("pair_id")["pair_id"], range(-12, pairs.height - 12), strict=True))
    return {"ws": ws, "plain": built.dataset_id, "first": first, "second": second, "g": g}


def _run(ws: Workspace, run_id: str, dataset_id: str, metrics: list[dict] | None = None) -> str:
    folder = ws.run_dir(run_id)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"dataset_id": dataset_id, "loss": {"name": "dpo"}}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics or []))
    return run_id


def test_the_section_shows_the_selections_own_numbers(selected: dict) -> None:
    ws, first, second = selected["ws"], selected["first"], selected["second"]
    metrics = [{"step": 1, "split": "train", "loss": 0.69, "weights/mean": 1.25}]
    run = _run(ws, "run-on-second", second.id, metrics)
    index = build_report(ws, run)
    page = index.read_text()
    # both selections of the ancestry, nearest first, each with its caption naming the rule
    views = gather(ws, run).selections
    assert [v.dataset_id for v in views] == [second.id, first.id]
    assert "rule=random · quotas=alpha=4,beta=100 · seed=3" in page
    assert "rule=small_gap · band_min=-0.3 · beta=0.1 · keep_n=10 · weight=1 + rank / 10.0" in page
    for index_, view in enumerate(views, 1):
        assert f'id="selection-{index_}"' in page
        # kept / dropped per source: the selection's own, in its summary and in the `selections` view
        counts = by_source(view)
        assert counts == view.summary["by_source"]
        sql = query(
            ws,
            f"SELECT source, sum(CASE WHEN kept THEN 1 ELSE 0 END) AS kept, sum(CASE WHEN kept THEN 0 ELSE 1 END) "
            f"AS dropped FROM selections WHERE dataset_id = '{view.dataset_id}' AND split = 'train' GROUP BY 1",
        )
        assert {
            r["source"]: {"kept": r["kept"], "dropped": r["dropped"]} for r in sql.iter_rows(named=True)
        } == counts
        for name in ("score", "sources", "edit_ratio"):
            assert (index.parent / f"selection{index_}_{name}.png").stat().st_size > 5_000
            assert f"src='selection{index_}_{name}.png'" in page
    # the funnel and lineage already carry the select step: two of them here
    assert page.count("<tr><td>select</td>") == 2
    # quotas: beta's target is above its candidates, so it is flagged short
    rows = {r["group"]: r for r in group_rows(views[0])}
    assert rows["alpha"]["target"] == rows["alpha"]["kept"] == 4 and not rows["alpha"]["short"]
    assert rows["beta"]["target"] == 100 and rows["beta"]["short"]
    assert rows["beta"]["kept"] == rows["beta"]["candidates"] == counts_of(views[0], "beta")
    assert f"Group beta is short: target 100, {rows['beta']['candidates']} candidates" in page


def counts_of(view, source_name: str) -> int:
    return sum(c["kept"] + c["dropped"] for s, c in by_source(view).items() if s.startswith(source_name))


def test_reference_ranking_and_weights_are_those_of_the_pairs(selected: dict, tmp_path: Path) -> None:
    ws, first, g = selected["ws"], selected["first"], selected["g"]
    run = _run(ws, "run-on-first", first.id, [{"step": 2, "split": "train", "weights/mean": 1.5}])
    [view] = gather(ws, run).selections
    assert "lp-ref-r" in view.reference_from  # the reference's table, found through the stage record
    kept = view.selectable.filter(pl.col("kept"))
    wrong = sum(g[p] < 0 for p in kept["pair_id"])
    selectable = view.selectable["pair_id"].to_list()
    text = " ".join(s.text for s in sentences(view))
    assert (
        f"The reference ranks {wrong:,} of the {kept.height:,} kept pairs wrong (G < 0, {wrong / kept.height:.0%}), "
        f"against {sum(g[p] < 0 for p in selectable) / len(selectable):.0%} of the {len(selectable):,} selectable"
    ) in text
    train_accuracy = view.summary["reference_ranking_accuracy"]["train"]
    assert f"train {train_accuracy:.2f}" in text and "implicit reward accuracy" in text
    weights = first.summary["selection"]["weight"]
    assert (
        f"mean {weights['mean']:.3g}" in text and "weights/mean as the runs last logged it: DPO 1.5." in text
    )
    drawn = images([view], tmp_path)
    assert drawn["selection1_weights"].stat().st_size > 5_000 and drawn["selection1_sources"].is_file()


def test_a_comparison_shows_each_selection_once_and_no_selection_no_section(selected: dict) -> None:
    ws = selected["ws"]
    runs = [_run(ws, f"cmp-{n}", selected["first"].id) for n in range(2)]
    data = gather(ws, runs)
    assert [v.dataset_id for v in data.selections] == [selected["first"].id]
    assert [label for label, _ in data.selections[0].trained] == [r.label for r in data.runs]
    html = section(data.selections, {})  # what the page places after the funnel
    assert html.count('id="selection-1"') == 1 and 'id="selection-2"' not in html
    plain = _run(ws, "run-on-plain", selected["plain"])
    index = build_report(ws, plain)
    assert gather(ws, plain).selections == []
    assert "selection-1" not in index.read_text() and not list(index.parent.glob("selection*.png"))


def test_group_targets_follow_the_selections_allocation() -> None:
    summary = {
        "config": {"rule": "random", "mix": {"a": 3, "b": 1}},
        "target": None,  # no keep: the largest total every group can fill
        "groups": {"a": {"candidates": 30, "kept": 9}, "b": {"candidates": 3, "kept": 3}},
    }
    assert group_targets(summary) == {"a": 9, "b": 3}
    summary = {"config": {"rule": "edit_quota", "keep_n": 8, "edit_buckets": [0, 0.5, 1]}, "target": 8}
    assert group_targets(summary) == {"edit[0,0.5)": 4, "edit[0.5,1]": 4}
    assert group_targets({"config": {"rule": "no such rule"}}) == {}


@given(st.lists(st.floats(0.01, 100), min_size=1, max_size=50))
def test_the_effective_size_lies_between_one_and_the_count(values: list[float]) -> None:
    weights = np.asarray(values)
    assert 1 - 1e-9 <= effective_size(weights) <= len(weights) + 1e-9
    assert effective_size(np.full(len(values), values[0])) == pytest.approx(len(values))
