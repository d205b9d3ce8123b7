"""The gate at the end of the data-to-model flow (Prefect test server): the first model becomes champion,
a model trained on reversed preferences (chosen and rejected swapped) is refused while the flow succeeds
and the reason is in SQL, a better refresh with a `--losses` comparison is promoted (the best of its
runs), and the same flow again records nothing new."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from flows.chain import UP_TO_DATE, ChainSpec, probe
from pipeline.gate import load_gate_config
from pipeline.sql import query
from pipeline.workspace import Workspace
from tests.flows.real_slice import run_flow

pytestmark = pytest.mark.slow

TRAINING = {
    "max_steps": 6,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "learning_rate": 0.01,
    "logging_steps": 3,
    "eval_steps": 6,
    "save_steps": 1000,
    "warmup_steps": 0,
    "beta": 0.1,
}
GATE = {
    "floors": {"rewards/accuracies": 0.6},
    "max_regression": {"rewards/accuracies": 0.1, "exact_match": 0.05},
    "generation": {"max_prompts": 4, "max_new_tokens": 6},
}


def pairs(count: int, seed: int, reverse: bool = False) -> list[dict[str, str]]:
    """Sums answered right (`#### N`, verifiable) against a non-answer: a preference a tiny model learns
    in a few steps. `reverse`: the same kind of data with chosen and rejected swapped."""
    rng, rows = random.Random(seed), []
    for index in range(count):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        good, bad = f"{a} plus {b} makes {a + b}. #### {a + b}", "Sorry, I am not sure about that one."
        chosen, rejected = (bad, good) if reverse else (good, bad)
        rows.append(
            {"prompt": f"Q{seed}-{index}: what is {a} plus {b}?", "chosen": chosen, "rejected": rejected}
        )
    return rows


def write(path: Path, rows: list[dict[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    from demo.tiny_model import make_tiny_model
    from demo.tiny_tokenizer import train_tiny_tokenizer

    texts = [" ".join(row.values()) for row in pairs(150, 99) + pairs(50, 98, reverse=True)]
    tokenizer = train_tiny_tokenizer(texts, tmp_path / "tokenizer", vocab_size=320)
    return make_tiny_model(tokenizer, tmp_path / "base", num_layers=1, hidden_size=32, num_heads=2)


def spec(sources: list[str], base: Path, losses: tuple[str, ...] = ("dpop",)) -> ChainSpec:
    return ChainSpec(
        sources=tuple(sources),
        base_model=str(base),
        curation={"split": {"eval_fraction": 0.25}},
        sft={"steps": 0},
        training=tuple({**TRAINING, "loss": loss} for loss in losses),
        gate=load_gate_config(GATE).as_dict(),
    )


def test_the_gate_refuses_a_reversed_model_and_promotes_a_better_one(prefect_server, tmp_path, base) -> None:
    ws = Workspace.open(tmp_path / "ws")
    good = write(tmp_path / "data" / "good.jsonl", pairs(64, 1))
    reversed_ = write(tmp_path / "data" / "reversed.jsonl", pairs(64, 2, reverse=True))
    more = write(tmp_path / "data" / "more.jsonl", pairs(32, 3))

    first = run_flow(ws, spec([good], base))
    assert first["gate"]["outcome"] == "promoted" and first["gate"]["champion_before"] is None
    champion = first["model_id"]
    assert first["gate"]["champion_after"] == champion

    bad = run_flow(ws, spec([reversed_], base))  # the flow succeeds: a refusal is an outcome
    gate = bad["gate"]
    assert gate["outcome"] == "refused" and gate["champion_after"] == champion
    failed = [c for c in gate["checks"] if not c["passed"]]
    # on the champion's eval set (good data) the reversed model prefers the wrong answers
    assert any(c["rule"] == "regression" and c["metric"] == "rewards/accuracies" for c in failed)
    assert len(gate["metrics"][bad["model_id"]]) >= 3  # two preference eval sets and generation
    outcome, reason, before = query(
        ws, "SELECT outcome, reason, champion_before FROM gate_decisions ORDER BY seq DESC LIMIT 1"
    ).row(0)
    assert (outcome, before) == ("refused", champion) and "worse than the tolerance" in reason
    both = query(
        ws,
        "SELECT count(DISTINCT model_id) FROM evals WHERE eval_set_id IN "
        f"(SELECT DISTINCT eval_set_id FROM evals WHERE model_id = '{bad['model_id']}')",
    ).item()
    assert both == 2  # the candidate and the champion, on the same eval sets
    overlaps = query(ws, "SELECT max(overlap_pairs), max(overlap_prompts) FROM evals").row(0)
    assert overlaps == (0, 0)

    better = run_flow(ws, spec([good, more], base, losses=("dpop", "dpo")))
    gate = better["gate"]
    assert gate["outcome"] == "promoted" and gate["champion_before"] == champion
    assert gate["promoted"] in {run["model_id"] for run in better["runs"]}
    aliases = dict(query(ws, "SELECT alias, model_id FROM model_aliases WHERE is_current").rows())
    assert aliases["champion"] == gate["promoted"]
    history = query(
        ws, "SELECT model_id FROM model_aliases WHERE alias = 'champion' ORDER BY seq"
    ).to_series()
    assert history.to_list() == [champion, gate["promoted"]]

    # nothing changed: the decision is found, nothing evaluated or recorded again
    events = (ws.root / "registry.jsonl").read_text(encoding="utf-8")
    again = probe(ws, spec([good, more], base, losses=("dpop", "dpo")))
    assert again is not None and again.status == UP_TO_DATE
    assert again.gate.decision["promoted"] == gate["promoted"]
    assert (ws.root / "registry.jsonl").read_text(encoding="utf-8") == events
