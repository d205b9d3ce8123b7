"""The model registry (`pipeline.registry`, `dpop models`): alias history in SQL, rollback as a stack,
`dpop catalog rebuild` replaying registry.jsonl, one-line errors, and the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.catalog_rebuild import rebuild_catalog
from pipeline.registry import REGISTRY_FILE, Registry, RegistryError
from pipeline.sql import query


def test_alias_history_is_queryable_and_rollback_pops(workspace) -> None:
    registry = Registry(workspace)
    registry.assign("champion", "model-a", "/m/a", "first model", actor="alice")
    registry.assign("champion", "model-b", "/m/b", "better on GSM8K", actor="bob")
    registry.assign("staging", "model-c", "/m/c", "try it")
    registry.record_gate(
        "champion", "refused: worse", {"outcome": "refused", "candidates": ["model-c"], "key": "k"}
    )
    back = registry.rollback("champion", "b broke production", actor="carol")
    assert (back.model_id, back.previous_model_id) == ("model-a", "model-b")
    assert registry.current("champion").model_id == "model-a"
    history = query(
        workspace,
        "SELECT seq, event, model_id, previous_model_id, reason, actor, is_current FROM model_aliases "
        "WHERE alias = 'champion' ORDER BY seq",
    ).rows()
    assert history == [
        (1, "assign", "model-a", None, "first model", "alice", False),
        (2, "assign", "model-b", "model-a", "better on GSM8K", "bob", False),
        (5, "rollback", "model-a", "model-b", "b broke production", "carol", True),
    ]
    current = query(workspace, "SELECT alias, model_id FROM model_aliases WHERE is_current ORDER BY alias")
    assert current.rows() == [("champion", "model-a"), ("staging", "model-c")]
    refused = query(workspace, "SELECT outcome, reason, candidates FROM gate_decisions").rows()
    assert refused == [("refused", "refused: worse", ["model-c"])]
    with pytest.raises(RegistryError, match="has had one holder"):
        registry.rollback("champion", "again")


def test_catalog_rebuild_replays_the_registry(workspace) -> None:
    registry = Registry(workspace)
    registry.assign("champion", "model-a", None, "first")
    registry.assign("champion", "model-b", None, "second")
    before = query(workspace, "SELECT * FROM model_aliases ORDER BY seq").rows()
    workspace.catalog_path.write_bytes(b"not a duckdb file")
    result = rebuild_catalog(workspace)
    assert result.moved_aside is not None and not result.skipped
    assert query(workspace, "SELECT * FROM model_aliases ORDER BY seq").rows() == before


def test_a_damaged_registry_names_the_file_line_and_field(workspace) -> None:
    registry = Registry(workspace)
    registry.assign("champion", "model-a", None, "first")
    path = workspace.root / REGISTRY_FILE
    good = path.read_text(encoding="utf-8")
    # a half-written last line (a crash while appending) is skipped
    path.write_text(good + '{"seq": 2, "at": "2026', encoding="utf-8")
    assert [e.model_id for e in registry.events()] == ["model-a"]
    event = json.loads(good)
    path.write_text(good + json.dumps({**event, "event": "promote"}) + "\n", encoding="utf-8")
    with pytest.raises(RegistryError, match=rf"{REGISTRY_FILE}: line 2: field 'event' is 'promote'"):
        registry.events()
    path.write_text(good + "not json\n" + good, encoding="utf-8")
    with pytest.raises(RegistryError, match="line 2: not JSON"):
        registry.events()


def test_aliases_and_reasons_are_checked(workspace) -> None:
    registry = Registry(workspace)
    with pytest.raises(RegistryError, match="alias 'no spaces'"):
        registry.assign("no spaces", "model-a", None, "x")
    with pytest.raises(RegistryError, match="a reason is required"):
        registry.assign("champion", "model-a", None, "  ")
    with pytest.raises(RegistryError, match="points at no model"):
        registry.rollback("champion", "x")
    assert not (workspace.root / REGISTRY_FILE).exists()  # nothing was recorded


def test_dpop_models_promote_list_rollback(workspace, tmp_path) -> None:
    runner = CliRunner()
    ws = ["-w", str(workspace.root)]
    Registry(workspace).assign("champion", "model-a", None, "first")
    promoted = runner.invoke(
        app, ["models", "promote", "model-a", "--alias", "prod", "--reason", "ship it", *ws]
    )
    assert promoted.exit_code == 0, promoted.output
    assert "prod -> model-a: ship it" in promoted.output
    listed = runner.invoke(app, ["models", *ws])
    assert listed.exit_code == 0 and "model-a" in listed.output and "champion" in listed.output
    unknown = runner.invoke(app, ["models", "promote", "model-zzz", "--reason", "x", *ws])
    assert unknown.exit_code == 1 and "neither a model folder nor a model id" in unknown.output
    missing = runner.invoke(app, ["models", "promote", "model-a", *ws])
    assert missing.exit_code != 0  # --reason is required
    rolled = runner.invoke(app, ["models", "rollback", "--alias", "prod", *ws])
    assert rolled.exit_code == 1 and "nothing to roll back to" in rolled.output
    history = query(workspace, "SELECT alias, model_id, actor FROM model_aliases ORDER BY seq").rows()
    assert [row[:2] for row in history] == [("champion", "model-a"), ("prod", "model-a")]
