"""Preference evaluation as a stage (`dpop.evaluate`, `dpop eval`): per-pair values checked by hand
against a plain forward pass, the trainer's own evaluation (and its new `logps/chosen_pre_edit`) agreeing
with the stage, the eval set's content identity, the edit buckets, reuse, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from dpop.config import TrainConfig
from dpop.data import ShardDataset
from dpop.evaluate import (
    PreferenceEvalStage,
    edit_buckets,
    eval_set_artifact,
    eval_set_id,
    evaluate,
    read_metrics,
    read_pairs,
)
from dpop.model_io import load_causal_lm, model_id
from dpop.refs import compute_reference_logps
from dpop.train import train
from pipeline.catalog import Catalog
from pipeline.contracts import validate
from pipeline.shards import load_manifest, shard_schema
from tests.dpop.conftest import write_dataset

EVAL_METRICS = {
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen_delta",
    "logps/rejected_delta",
    "logps/chosen_pre_edit_delta",
    "logps/chosen_post_edit_delta",
    "dpop/penalty_active",
}


@pytest.fixture(scope="module")
def probe_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """Another model with the same tokenizer and other weights: a policy that differs from the reference."""
    from demo.tiny_model import make_tiny_model

    folder = tmp_path_factory.mktemp("probe") / "model"
    return make_tiny_model(tiny_model_dir, folder, num_layers=2, hidden_size=32, num_heads=2, seed=7)


def _by_hand(model_dir: Path, row: dict) -> np.ndarray:
    """log p of each chosen token given prompt and the chosen tokens before it: one plain forward pass."""
    model = load_causal_lm(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[*row["prompt_ids"], *row["chosen_ids"]]])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    start = len(row["prompt_ids"])
    targets = ids[0, start:]
    return logps[torch.arange(start - 1, ids.shape[1] - 1), targets].numpy()


def test_every_pair_value_is_what_a_plain_forward_pass_gives(workspace, tiny_model_dir, probe_dir):
    dataset_id = write_dataset(workspace, tiny_model_dir, train=8, eval=12)
    record = evaluate(workspace, probe_dir, tiny_model_dir, dataset_id, beta=0.25)
    pairs = read_pairs(workspace, record)
    validate(pairs, "pair_eval")
    validate(read_metrics(workspace, record), "eval_metric")
    rows = pairs.to_pylist()
    assert len(rows) == 12 and record.output("pair_eval").rows == 12
    assert {r["eval_id"] for r in rows} == {record.id} and {r["model_id"] for r in rows} == {
        model_id(probe_dir)
    }
    assert {r["reference_id"] for r in rows} == {model_id(tiny_model_dir)}
    shards = ShardDataset.open(workspace, dataset_id, "eval")
    assert [r["pair_id"] for r in rows] == shards.table.column("pair_id").to_pylist()  # the split's order
    for index in (0, 5, 11):
        row, shard = rows[index], shards[index]
        delta = _by_hand(probe_dir, shard) - _by_hand(tiny_model_dir, shard)
        np.testing.assert_allclose(row["chosen_token_delta"], delta, atol=2e-4)
        cut = shard["common_prefix_len"]
        assert row["chosen_tokens"] == len(shard["chosen_ids"]) == len(row["chosen_token_delta"])
        assert row["delta_pre_edit"] == pytest.approx(delta[:cut].mean(), abs=2e-4)
        assert row["delta_post_edit"] == pytest.approx(delta[cut:].mean(), abs=2e-4)
        assert row["delta_chosen_logps"] == pytest.approx(delta.sum(), abs=2e-3)
    for row in rows:
        assert row["delta_chosen_logps"] == pytest.approx(
            row["policy_chosen_logps"] - row["ref_chosen_logps"], abs=1e-4
        )
        rejected = row["policy_rejected_logps"] - row["ref_rejected_logps"]
        assert row["reward_margin"] == pytest.approx(0.25 * (row["delta_chosen_logps"] - rejected), abs=1e-4)
        assert row["correct"] == (row["reward_margin"] > 0)
        assert row["edit_bucket"].startswith("q1 ")  # every conftest pair has edit ratio 0.05: one bucket
    # the metrics are the pairs' means (pre/post-edit ones pooled over tokens), overall and per group
    overall = {
        m["metric"]: m for m in read_metrics(workspace, record).to_pylist() if m["group_kind"] == "all"
    }
    assert set(overall) >= EVAL_METRICS and {m["n"] for m in overall.values()} <= {12}
    assert overall["rewards/accuracies"]["value"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    tokens = [(r["chosen_token_delta"], r["common_prefix_len"]) for r in rows]
    pooled = np.concatenate([np.asarray(d[c:]) for d, c in tokens]).mean()
    assert overall["logps/chosen_post_edit_delta"]["value"] == pytest.approx(pooled, abs=1e-5)
    below = np.mean([r["delta_chosen_logps"] < 0 for r in rows])
    assert overall["dpop/penalty_active"]["value"] == pytest.approx(below)
    # the catalog knows the eval, its two tables and what they were made from
    relations = dict((relation, parent) for parent, relation in Catalog(workspace).parents(record.id))
    assert relations["evaluated_model"] == model_id(probe_dir)
    assert relations["evaluated_on"] == record.summary["eval_set"]


def test_the_trainers_evaluation_and_the_stage_agree(workspace, tiny_model_dir, monkeypatch):
    """The stage on a trained model gives the trainer's own final evaluation; the trainer's new
    logps/chosen_pre_edit (and post_edit) minus their step-0 values (the reference: eval_on_start) are
    the stage's pooled per-token changes."""
    dataset_id = compute_reference_logps(
        workspace, write_dataset(workspace, tiny_model_dir), tiny_model_dir, progress=False
    )
    config = TrainConfig(
        max_steps=4,
        logging_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        save_steps=100,
        disable_tqdm=True,
        eval_on_start=True,
        eval_strategy="steps",
        eval_steps=4,
        beta=0.2,
    )
    result = train(workspace, dataset_id, tiny_model_dir, config)
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    for event in events:
        assert {"logps/chosen_pre_edit", "logps/chosen_post_edit"} <= set(event), event["split"]
    evals = [e for e in events if e["split"] == "eval"]
    start, end = evals[0], evals[-1]
    assert start["step"] == 0 and end["step"] == 4

    record = evaluate(workspace, result.model_dir, tiny_model_dir, dataset_id, beta=0.2)
    overall = {
        m["metric"]: m["value"]
        for m in read_metrics(workspace, record).to_pylist()
        if m["group_kind"] == "all"
    }
    assert overall["rewards/accuracies"] == pytest.approx(end["rewards/accuracies"])
    assert overall["rewards/margins"] == pytest.approx(end["rewards/margins"], abs=1e-4)
    assert overall["logps/chosen_delta"] == pytest.approx(
        end["logps/chosen"] - end["ref_logps/chosen"], abs=1e-3
    )
    assert overall["dpop/penalty_active"] == pytest.approx(end["dpop/penalty_active"])
    for side in ("pre", "post"):
        trainer = end[f"logps/chosen_{side}_edit"] - start[f"logps/chosen_{side}_edit"]
        assert overall[f"logps/chosen_{side}_edit_delta"] == pytest.approx(trainer, abs=1e-4)
    # the stored reference log-probs are what the stage computed for the reference
    stored = ShardDataset.open(workspace, dataset_id, "eval").table.column("ref_chosen_logps").to_numpy()
    np.testing.assert_allclose(
        read_pairs(workspace, record).column("ref_chosen_logps").to_numpy(), stored, atol=1e-4
    )

    # `dpop eval` with nothing but the model and the dataset: the run's reference, β and precision
    from cli.commands._common import console

    monkeypatch.setattr(console, "width", 250)  # the table whole, as a wide terminal shows it
    cli = CliRunner().invoke(
        app,
        ["eval", "-w", str(workspace.root), "-m", str(result.model_dir), "-d", dataset_id],
    )
    assert cli.exit_code == 0, cli.output
    assert cli.output.strip().splitlines()[-1] == record.id and "(reused)" in cli.output
    assert "│ all " in cli.output and "│ q1 [0.05, 0.05]" in cli.output


def test_the_eval_set_is_the_splits_content(workspace, tiny_model_dir, probe_dir):
    """A dataset and its -ref- version are one eval set; two models evaluated on it compare on the same
    pairs; the same evaluation asked again, or through the other version, is reused."""
    dataset_id = write_dataset(workspace, tiny_model_dir, train=8, eval=6)
    with_refs = compute_reference_logps(workspace, dataset_id, tiny_model_dir, progress=False)
    assert eval_set_artifact(workspace, dataset_id).id == eval_set_artifact(workspace, with_refs).id
    assert eval_set_artifact(workspace, dataset_id).id != eval_set_artifact(workspace, dataset_id, "train").id
    first = evaluate(workspace, probe_dir, tiny_model_dir, dataset_id)
    again = evaluate(workspace, probe_dir, tiny_model_dir, with_refs)
    assert again.reused and again.id == first.id
    itself = evaluate(workspace, tiny_model_dir, tiny_model_dir, dataset_id)  # the step-0 policy: one pass
    assert itself.summary["eval_set"] == first.summary["eval_set"] and itself.id != first.id
    assert itself.summary["metrics"]["rewards/accuracies"] == 0.0  # margins of exactly 0 are not correct
    assert itself.summary["metrics"]["logps/chosen_delta"] == 0.0
    other_beta = PreferenceEvalStage(probe_dir, tiny_model_dir, dataset_id, beta=0.5, ws=workspace)
    assert other_beta.id != first.id


tokens = st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=5)
rows = st.lists(
    st.tuples(st.text("0123456789abcdef", min_size=1, max_size=4), tokens, tokens, tokens), max_size=5
)


def _shards(items: list) -> pa.Table:
    data = {
        "pair_id": [p for p, *_ in items],
        "prompt_ids": [a for _, a, _, _ in items],
        "chosen_ids": [b for _, _, b, _ in items],
        "rejected_ids": [c for *_, c in items],
    }
    schema = shard_schema()
    return pa.table({name: pa.array(values, schema.field(name).type) for name, values in data.items()})


@given(rows, rows)
@settings(max_examples=60, deadline=None)
def test_eval_set_ids_are_equal_exactly_when_pairs_and_tokens_are(a: list, b: list) -> None:
    assert (eval_set_id(_shards(a)) == eval_set_id(_shards(b))) == (a == b)


@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=60))
def test_edit_buckets_are_quartiles_that_contain_their_ratios(ratios: list[float]) -> None:
    labels = edit_buckets(np.array(ratios))
    assert len(labels) == len(ratios) and len(set(labels)) <= 4
    quartile = np.array([int(label[1]) for label in labels])
    order = np.argsort(ratios, kind="stable")
    assert all(np.diff(quartile[order]) >= 0)  # a higher ratio is never in a lower bucket
    assert quartile[order[0]] == 1  # the lowest ratio is in q1
    # closed on the right (pandas.qcut): q is (bound q-1, bound q], q1 also holds its lower bound
    bounds = np.quantile(ratios, [0.0, 0.25, 0.5, 0.75, 1.0])
    for ratio, q, label in zip(ratios, quartile, labels, strict=True):
        assert ratio <= bounds[q] and (ratio > bounds[q - 1] or q == 1)
        assert label.startswith(f"q{q} {'[' if q == 1 else '('}") and label.endswith("]")
    # at most a quarter of the pairs (rounded up) sit strictly below the q2 bucket's lower bound
    assert np.sum(np.array(ratios) < bounds[1]) <= -(-len(ratios) // 4)


def test_sources_and_buckets_group_the_metrics(workspace, tiny_model_dir, probe_dir):
    dataset_id = write_dataset(workspace, tiny_model_dir, train=4, eval=8)
    ids = ShardDataset.open(workspace, dataset_id, "eval").table.column("pair_id").to_pylist()
    pq.write_table(
        pa.table(
            {
                "pair_id": ids[:6],
                "source": ["a.jsonl (flat)"] * 3 + ["b.jsonl (flat)"] * 3,
                "source_uri": ["/data/a.jsonl"] * 3 + ["/data/b.jsonl"] * 3,
                "source_row": list(range(6)),
                "split": ["eval"] * 6,
            }
        ),
        workspace.dataset_dir(dataset_id) / "pairs.parquet",
    )
    record = evaluate(workspace, probe_dir, tiny_model_dir, dataset_id)
    pairs = read_pairs(workspace, record).to_pylist()
    assert [p["source"] for p in pairs] == ["a.jsonl (flat)"] * 3 + ["b.jsonl (flat)"] * 3 + [None, None]
    assert pairs[4]["source_uri"] == "/data/b.jsonl" and pairs[4]["source_row"] == 4
    metrics = read_metrics(workspace, record).to_pylist()
    groups = {(m["group_kind"], m["group"]): m["n"] for m in metrics if m["metric"] == "rewards/accuracies"}
    assert groups == {("all", "all"): 8, ("source", "a.jsonl (flat)"): 3, ("source", "b.jsonl (flat)"): 3,
                      ("source", "unknown"): 2, ("edit_bucket", "q1 [0.05, 0.05]"): 8}  # fmt: skip
    a = [p for p in pairs if p["source"] == "a.jsonl (flat)"]
    by_source = {m["metric"]: m["value"] for m in metrics if m["group"] == "a.jsonl (flat)"}
    assert by_source["logps/chosen_delta"] == pytest.approx(
        np.mean([p["delta_chosen_logps"] for p in a]), abs=1e-4
    )
    assert {m["eval_set_id"] for m in metrics} == {record.summary["eval_set"]} and {
        m["kind"] for m in metrics
    } == {"preference"}


def test_bad_inputs_fail_in_one_line(workspace, tiny_model_dir, probe_dir, tmp_path):
    dataset_id = write_dataset(workspace, tiny_model_dir, train=4, eval=0)
    with pytest.raises(ValueError, match="eval split of dataset .* is empty"):
        evaluate(workspace, probe_dir, tiny_model_dir, dataset_id)
    with pytest.raises(ValueError, match=r"has no 'test' split \(it has: eval, train\)"):
        evaluate(workspace, probe_dir, tiny_model_dir, dataset_id, split="test")
    with pytest.raises(ValueError, match="beta must be > 0"):
        PreferenceEvalStage(probe_dir, tiny_model_dir, dataset_id, beta=0, ws=workspace)
    other = write_dataset(
        workspace, tiny_model_dir, dataset_id="other-tok", tokenizer_sha256_override="0" * 64
    )
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate(workspace, probe_dir, tiny_model_dir, other)
    assert not list(workspace.evals_dir.glob("*"))  # nothing written by a refused evaluation

    def cli(*args: str):
        return CliRunner().invoke(app, ["eval", "-w", str(workspace.root), *args])

    refused = cli("-m", str(probe_dir), "-r", str(tiny_model_dir), "-d", dataset_id, "--split", "test")
    assert refused.exit_code == 1 and refused.output.count("\n") == 1 and "no 'test' split" in refused.output
    no_reference = cli("-m", str(probe_dir), "-d", dataset_id)
    assert no_reference.exit_code == 1 and "--reference" in no_reference.output
    missing = cli("-m", str(tmp_path / "nope"), "-d", dataset_id, "-r", str(tiny_model_dir))
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert load_manifest(workspace, dataset_id)["splits"]["eval"]["rows"] == 0
