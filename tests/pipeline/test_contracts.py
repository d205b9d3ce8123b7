"""Code and data contracts agree: the YAML files parse, validators catch each kind of breach, and the
columns and reason codes the code writes are the ones the contracts allow."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline.contracts import CONTRACTS_DIR, ContractError, load_contract, validate
from pipeline.ingest import stage as ingest_stage

SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
INGEST_SOURCES = Path(ingest_stage.__file__).parent


@pytest.mark.parametrize("path", sorted(CONTRACTS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_contract_files_parse_and_describe_every_column(path):
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert spec["name"] == path.stem
    assert SEMVER.match(str(spec["version"]))
    contract = load_contract(path.stem)
    assert contract.columns
    for column in contract.columns.values():
        assert column.meaning, f"{path.stem}.{column.name} has no meaning"
    assert len(contract.schema()) == len(contract.columns)


def test_all_three_contracts_exist():
    assert {p.stem for p in CONTRACTS_DIR.glob("*.yaml")} >= {"preference_pair", "rejection", "dpop_shard"}
    shard = load_contract("dpop_shard")
    assert shard.columns["prompt_ids"].type == pa.list_(pa.int32())
    assert shard.columns["ref_chosen_logps"].nullable


def pair_row(**overrides):
    row = {
        "pair_id": "0" * 32,
        "prompt": [{"role": "user", "content": "p"}],
        "chosen": "c",
        "rejected": "r",
        "chosen_score": None,
        "rejected_score": None,
        "source": "s:flat",
        "source_uri": "file:///x",
        "source_row": 0,
        "source_sha256": "a" * 64,
    }
    return row | overrides


def pair_table(rows):
    contract = load_contract("preference_pair")
    return pa.Table.from_pylist(rows, schema=contract.schema(list(rows[0])))


def test_ingest_columns_are_exactly_the_contract_base_columns():
    pairs = load_contract("preference_pair")
    assert set(ingest_stage.PAIR_COLUMNS) <= set(pairs.columns)
    assert set(pairs.required_columns) <= set(ingest_stage.PAIR_COLUMNS)
    assert list(load_contract("rejection").columns) == ingest_stage.REJECTION_COLUMNS


def test_a_column_in_code_but_not_in_the_contract_fails():
    table = pair_table([pair_row()]).append_column("surprise", pa.array([1]))
    with pytest.raises(ContractError, match="columns not in the contract: \\['surprise'\\]"):
        load_contract("preference_pair").conform(table)
    with pytest.raises(ContractError, match="surprise"):
        validate(table, "preference_pair")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pair_id": "not-hex"}, "pair_id.*pattern"),
        ({"source_row": -1}, "source_row.*below 0"),
        ({"prompt": []}, "prompt.*fewer than 1"),
        ({"prompt": [{"role": "narrator", "content": "x"}]}, "role outside"),
        ({"chosen": None}, "chosen.*null"),
    ],
)
def test_validator_catches_each_breach(overrides, message):
    with pytest.raises(ContractError, match=message):
        validate(pair_table([pair_row(), pair_row(**overrides)]), "preference_pair")


def test_missing_required_column_and_wrong_type_fail():
    table = pair_table([pair_row()])
    with pytest.raises(ContractError, match="missing required columns: \\['chosen'\\]"):
        validate(table.drop_columns(["chosen"]), "preference_pair")
    wrong = table.set_column(table.column_names.index("source_row"), "source_row", pa.array(["zero"]))
    with pytest.raises(ContractError, match="cannot cast"):
        load_contract("preference_pair").conform(wrong)


def test_every_reason_code_in_ingest_code_is_allowed():
    allowed = set(load_contract("rejection").columns["reason"].constraints["allowed"])
    used = set()
    for path in INGEST_SOURCES.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r'Reject\(\s*"([a-z0-9_]+)"', text))  # Reject("reason", ...)
        used |= set(re.findall(r'\(\s*"([a-z0-9_]+)",\s*f"', text))  # reader errors: ("reason", f"detail")
    assert used, "no reason codes found in the ingest code"
    assert used <= allowed, f"reason codes used but not in the contract: {sorted(used - allowed)}"
    for reason in (
        "malformed_json",
        "invalid_utf8",
        "not_an_object",
        "tie",
        "prompt_mismatch",
        "unknown_role",
    ):
        assert reason in used


def test_rejection_contract_rejects_unknown_reason_and_stage():
    contract = load_contract("rejection")
    row = {
        "source_uri": "file:///x",
        "source_row": 0,
        "source_sha256": "a" * 64,
        "pair_id": None,
        "stage": "ingest",
        "reason": "malformed_json",
        "detail": "d",
        "raw": None,
    }
    validate(pa.Table.from_pylist([row], schema=contract.schema()), contract)
    for field, value in (("reason", "gremlins"), ("stage", "train")):
        bad = pa.Table.from_pylist([row | {field: value}], schema=contract.schema())
        with pytest.raises(ContractError, match=f"{field}.*allowed values"):
            validate(bad, contract)
