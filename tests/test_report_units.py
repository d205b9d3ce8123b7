"""The report's parts on inputs built here (fast): the binomial interval, the computed sentences, the
lineage DAG, the inspector's deterministic and bounded sampling (on a million pairs), the answer
diff, the funnel's axis, the config table's booleans and the default comparison of `dpop run`."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.report import inspector, lineage_graph, page, plots
from pipeline.report.compare import RunSummary, Trajectory, wilson_interval
from pipeline.report.data import BaseModel, DatasetData, RunData, loss_label
from pipeline.report.text import base_warnings, dataset_warnings, headline, run_story, run_warnings

# --- the interval and the sentences -----------------------------------------------------------------


@given(st.integers(1, 100_000), st.floats(0, 1))
def test_wilson_interval_holds_the_proportion_and_stays_in_0_1(n: int, share: float) -> None:
    successes = round(share * n)
    low, high = wilson_interval(successes, n)
    assert 0 <= low <= successes / n <= high <= 1
    wider_low, wider_high = wilson_interval(successes / n * max(1, n // 4), max(1, n // 4))
    assert wider_high - wider_low >= high - low - 1e-12  # fewer pairs, a wider interval


def test_wilson_interval_matches_a_known_value() -> None:
    # 7 of 10: Wilson 95% interval (0.3968, 0.8922), as statsmodels' proportion_confint(method="wilson")
    low, high = wilson_interval(7, 10)
    assert (round(low, 4), round(high, 4)) == (0.3968, 0.8922)


def summary(label: str = "DPOP λ=50", penalty: float = 50.0, **values) -> RunSummary:
    s = RunSummary("run-x", label, penalty, "the evaluation stage (eval-x, 60 eval pairs)", 60, penalty == 0)
    for key, value in values.items():
        setattr(s, key, value)
    if s.accuracy is not None:
        s.accuracy_interval = wilson_interval(s.accuracy * s.eval_pairs, s.eval_pairs)
    return s


def test_a_run_at_chance_is_told_so_and_a_clear_one_is_not() -> None:
    chance = summary(accuracy=0.5, eval_pairs=60)
    text = " ".join(s.text for s in run_warnings(chance))
    assert chance.at_chance and "at chance" in text and "0.50 on 60 eval pairs" in text
    clear = summary(accuracy=0.8, eval_pairs=200)
    assert not clear.at_chance and not run_warnings(clear)


def test_a_loss_spike_and_a_penalty_on_most_pairs_are_warned() -> None:
    s = summary(
        loss_first=0.693, loss_last=0.9, loss_max=7.0, loss_max_step=12, below_reference=0.8, accuracy=0.9
    )
    text = " ".join(w.text for w in run_warnings(s))
    assert "spiked to 7 at step 12" in text and "10.1×" in text
    assert "penalty is active on 80% of the eval pairs" in text
    dpo = summary("DPO", 0.0, below_reference=0.8, accuracy=0.9)
    assert not run_warnings(dpo)  # DPO has no penalty to warn about


def test_headline_says_which_run_lowered_log_p_chosen_from_the_numbers() -> None:
    dpo = summary("DPO", 0.0, chosen_delta=-52.2, post_edit_delta=-0.41, below_reference=0.95)
    dpop = summary("DPOP λ=50", 50.0, chosen_delta=1.6)
    text = [s.text for s in headline([dpop, dpo])]
    assert text[0].startswith("DPOP λ=50: log p(chosen) rose 1.6 nats above the reference")
    assert text[1] == (
        "DPO: log p(chosen) fell 52.2 nats below the reference (mean per answer over 60 eval pairs; -0.41 "
        "per token from the first edit on); it is below the reference on 95% of them."
    )
    assert (
        "DPO lowered the likelihood of the preferred answers and DPOP λ=50 did not (-52.2 vs +1.6" in text[2]
    )
    # the same sentence is not asserted when the numbers do not say it
    calm = [s.text for s in headline([dpop, summary("DPO", 0.0, chosen_delta=0.3)])]
    assert "Neither DPO nor DPOP λ=50 lowered log p(chosen)" in calm[-1]
    both = [s.text for s in headline([summary(chosen_delta=-1.0), summary("DPO", 0.0, chosen_delta=-9.0)])]
    assert "Both DPO and DPOP λ=50 lowered" in both[-1] and "by less (-1 vs -9 nats)" in both[-1]


def test_the_story_says_what_rose_and_fell_over_the_evaluations() -> None:
    s = summary(accuracy=0.61, margin=0.84, rejected_delta=-40.0, loss_first=0.693, loss_last=0.41, steps=80)
    s.over_steps = {
        "rewards/accuracies": Trajectory(0.52, 0.61, 20, 80),
        "chosen_delta": Trajectory(0.4, -1.2, 20, 80),
    }
    text = " ".join(x.text for x in run_story(s))
    assert (
        "reward accuracy rose from 0.52 to 0.61" in text
        and "log p(chosen) − reference fell from +0.4 to -1.2" in text
    )
    assert "(steps 20–80)" in text and "training loss went from 0.693 to 0.41 in 80 steps" in text


def test_a_tiny_base_model_and_cut_prompts_are_warned(tmp_path: Path) -> None:
    run = RunData("run-x", tmp_path, {}, {}, [], "ds-x", {"name": "dpo"}, None, None, "DPO")
    run.base = BaseModel(
        "model-sft-1", None, tiny=True, parameters=58_528, sft_steps=120, sft_final_loss=1.23
    )
    [warning] = base_warnings([run, run])  # one base model, said once
    assert "tiny Llama (58,528 parameters, random initial weights, warmed up by 120 SFT steps" in warning.text
    prompts = np.array([10, 192, 192, 50, 192])
    dataset = DatasetData(
        "ds-x", "ds-x", {}, [], None, None, None, [], {}, {"prompt": prompts}, None, 192, None
    )
    [cut] = dataset_warnings(dataset)
    assert cut.text.startswith("3 of 5 prompts (60.0%) are exactly max_prompt_length = 192 tokens long")
    dataset.token_lengths = {"prompt": np.array([10, 191])}
    assert dataset_warnings(dataset) == []


def test_loss_labels() -> None:
    assert loss_label({"name": "dpop", "penalty_lambda": 50.0}) == "DPOP λ=50"
    assert loss_label({"name": "dpop", "penalty_lambda": 0}) == "DPO"
    assert loss_label({"name": "dpo", "beta": 0.1}) == "DPO"
    assert loss_label({"name": "ipo"}) == "IPO"


def test_booleans_read_true_and_false_in_tables() -> None:
    assert (page._number(True), page._number(False), page._number(3), page._number(None)) == (
        "true",
        "false",
        "3",
        "null",
    )


# --- the lineage graph --------------------------------------------------------------------------------


def _tree() -> dict:
    source = {
        "id": "f1",
        "kind": "source_file",
        "uri": "file:///d/a.jsonl",
        "relation": "ingested_from",
        "parents": [],
    }
    pairs = {"id": "pairs-i", "kind": "pairs", "rows": 120, "relation": "curated_from", "parents": [source]}
    dataset = {"id": "ds-1", "kind": "dataset", "rows": 120, "relation": "sft_on", "parents": [pairs]}
    tiny = {
        "id": "model-tiny",
        "kind": "model",
        "relation": "sft_from",
        "parents": [{**pairs, "relation": "tokenizer_trained_on"}],
    }
    sft = {"id": "model-sft", "kind": "model", "parents": [tiny, dataset]}
    ref = {
        "id": "ds-1-ref",
        "kind": "dataset",
        "relation": "trained_on",
        "parents": [{**dataset, "relation": "reference_logps_from"}, {**sft, "relation": "reference_model"}],
    }
    return {
        "id": "run-a",
        "kind": "run",
        "parents": [{**sft, "relation": "base_model"}, {**sft, "relation": "reference_model"}, ref],
    }


def test_the_lineage_is_a_dag_with_each_artefact_once() -> None:
    second = {**_tree(), "id": "run-b"}
    nodes = lineage_graph.merge([_tree(), second])
    assert sorted(nodes) == sorted(
        ["f1", "pairs-i", "ds-1", "model-tiny", "model-sft", "ds-1-ref", "run-a", "run-b"]
    )
    assert sorted(nodes["run-a"].parents) == [
        ("ds-1-ref", "trained_on"),
        ("model-sft", "base_model"),
        ("model-sft", "reference_model"),
    ]
    columns = lineage_graph.layers(nodes)
    column_of = {n: i for i, column in enumerate(columns) for n in column}
    for node in nodes.values():  # every edge points right
        assert all(column_of[p] < column_of[node.id] for p, _ in node.parents)
    svg = lineage_graph.svg([_tree(), second])
    ids = re.findall(r"data-id='([^']+)'", svg)
    assert sorted(ids) == sorted(nodes) and "a.jsonl" in svg
    pairs = {(p, n.id) for n in nodes.values() for p, _ in n.parents}
    assert svg.count("marker-end=") == len(pairs) == 11  # base and reference: one arrow, both names
    assert ">base_model, reference_model</text>" in svg


# --- the inspector's sampling and diff -------------------------------------------------------------------


def test_sampling_a_million_pairs_is_deterministic_and_bounded() -> None:
    n = 1_000_000
    rng = np.random.default_rng(0)
    pairs = pl.DataFrame(
        {
            "pair_id": [f"p{i:07d}" for i in range(n)],
            "edit_ratio": rng.random(n).round(3),
            "split": np.where(rng.random(n) < 0.05, "eval", "train"),
        }
    ).lazy()
    started = time.perf_counter()
    ids, pool_size, pool = inspector.lowest_edit(pairs, inspector.N_LOWEST)
    elapsed = time.perf_counter() - started
    frame = pairs.collect()
    expected = (
        frame.filter(pl.col("split") == "eval").sort(["edit_ratio", "pair_id"]).head(inspector.N_LOWEST)
    )
    assert ids == expected.get_column("pair_id").to_list() and pool == "eval"
    assert pool_size == frame.filter(pl.col("split") == "eval").height
    assert inspector.lowest_edit(pairs, inspector.N_LOWEST)[0] == ids  # the same pairs every time
    assert elapsed < 10, elapsed
    deltas = [
        pl.DataFrame({"pair_id": ["a", "b", "c"], "delta_chosen_logps": [-1.0, 2.0, -5.0]}).lazy(),
        pl.DataFrame({"pair_id": ["a", "b", "c"], "delta_chosen_logps": [-9.0, -0.5, 0.0]}).lazy(),
    ]
    assert inspector.largest_drops(deltas, 2) == ["a", "c"] and inspector.largest_drops(deltas, 10) == [
        "a",
        "c",
        "b",
    ]


def test_rejections_are_sampled_k_per_reason_by_file_and_row() -> None:
    rows = [
        {"source_uri": f"file:///f{i % 3}.jsonl", "source_row": i, "pair_id": None, "stage": "ingest",
         "reason": reason, "detail": "d", "raw": "x" * 5000}
        for i, reason in enumerate(["malformed_json"] * 20 + ["tie"] * 2)
    ]  # fmt: skip
    sample, totals = inspector.rejection_sample([pl.DataFrame(rows).lazy()], 5)
    assert totals == {"ingest/malformed_json": 20, "ingest/tie": 2}
    counts = dict(sample.group_by("reason").len().iter_rows())
    assert counts == {"malformed_json": 5, "tie": 2}
    first = sample.filter(pl.col("reason") == "malformed_json")
    assert first.get_column("source_uri").to_list() == ["file:///f0.jsonl"] * 5  # ordered by file, then row
    assert first.get_column("source_row").to_list() == [0, 3, 6, 9, 12]
    assert sample.get_column("raw").str.len_chars().max() == inspector.RAW_CHARS


def _text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=120), st.text(max_size=120))
def test_the_diff_keeps_both_texts_and_marks_one_first_difference(chosen: str, rejected: str) -> None:
    left, right = inspector.diff_spans(chosen, rejected)
    assert _text(left) == chosen and _text(right) == rejected
    differs = chosen != rejected
    assert left.count("first'>") == right.count("first'>") == int(differs)


def test_the_diff_of_a_one_digit_edit_marks_that_digit() -> None:
    left, right = inspector.diff_spans("so 2 * 7 = 14 crayons", "so 2 * 7 = 12 crayons")
    assert "<mark class='first'>4</mark>" in left and "<mark class='first'>2</mark>" in right


def test_token_strip_colours_by_delta_and_outlines_the_first_edit() -> None:
    strip = inspector.token_strip(["a", " b", "<c>"], [0.5, -1.0, None], 1, 1.0)
    spans = re.findall(r"<span class='([^']+)'( style='[^']*')? title='([^']*)'>", strip)
    assert [s[0] for s in spans] == ["tok", "tok first", "tok"]
    assert "31,119,180" in spans[0][1] and "214,39,40,0.85" in spans[1][1] and spans[2][1] == ""
    assert "&lt;c&gt;" in strip and "first token after the common prefix" in spans[1][2]


# --- figures and the default comparison --------------------------------------------------------------------


def test_the_funnel_axis_fits_its_data(tmp_path: Path) -> None:
    rows = [
        {"step": "input", "rows_in": 1000, "dropped": 0, "reason": ""},
        {"step": "dup", "rows_in": 1000, "dropped": 250, "reason": "duplicate_pair"},
    ]
    figure = plots.funnel_figure(rows)
    assert figure.axes[0].get_xlim() == (0.0, 1020.0)  # the widest step, not room for labels
    assert plots.funnel(rows, tmp_path / "f.png").stat().st_size > 5_000


def test_dpop_run_compares_dpop_with_dpo_by_default(tmp_path: Path) -> None:
    from cli.commands.run import chain_spec
    from demo.defaults import compared_losses, load_run_config

    flags = dict.fromkeys(("n", "steps", "sft_steps", "seed"))
    spec = chain_spec(None, None, None, flags, None, False)
    assert [(t["loss"], t.get("penalty_lambda")) for t in spec.training][0] == ("dpop", 50.0)
    assert [t["loss"] for t in spec.training] == ["dpop", "dpo"]
    assert load_run_config().losses == ("dpop:50", "dpo")
    one = tmp_path / "one.yaml"
    one.write_text("training:\n  loss: ipo\n")  # a file that chooses one loss trains that loss alone
    assert [t["loss"] for t in chain_spec(None, None, one, flags, None, False).training] == ["ipo"]
    assert [t["loss"] for t in chain_spec(None, None, one, flags, "dpo,dpop:5", False).training] == [
        "dpo",
        "dpop",
    ]
    assert compared_losses({"losses": ["dpo"], "training": {"loss": "ipo"}}, ["dpo"]) == ["dpo"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("losses: 5\n")
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="config key 'losses' must be a list of non-empty strings"):
        load_run_config(bad)
