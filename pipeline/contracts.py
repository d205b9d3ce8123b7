"""Data contracts: the YAML files in `data_contracts/` as pyarrow schemas and validators.

The YAML is the source of truth; code and tests both read it, so a column added in code but not in
the contract fails validation (the dbt / data-contract discipline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

# data_contracts/ sits beside pipeline/ both in the repository and when installed as a wheel.
CONTRACTS_DIR = Path(__file__).resolve().parents[1] / "data_contracts"


class ContractError(ValueError):
    """A table does not satisfy its contract. The message names the contract, column and first bad row."""


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    required: bool
    constraints: dict[str, Any] = field(default_factory=dict)
    meaning: str = ""


@dataclass(frozen=True)
class Contract:
    name: str
    version: str
    description: str
    columns: dict[str, Column]

    def schema(self, present: list[str] | None = None) -> pa.Schema:
        """The pyarrow schema, in contract order; `present` limits it to those columns (optional ones)."""
        names = [c for c in self.columns if present is None or c in present]
        return pa.schema([pa.field(n, self.columns[n].type, self.columns[n].nullable) for n in names])

    @property
    def required_columns(self) -> list[str]:
        return [n for n, c in self.columns.items() if c.required]

    def conform(self, table: pa.Table) -> pa.Table:
        """Cast a table to the contract's types and column order, then validate it."""
        present = [n for n in self.columns if n in table.column_names]
        extra = [n for n in table.column_names if n not in self.columns]
        if extra:
            raise ContractError(f"contract {self.name} v{self.version}: columns not in the contract: {extra}")
        try:
            table = table.select(present).cast(self.schema(present))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
            raise ContractError(f"contract {self.name} v{self.version}: cannot cast: {error}") from error
        validate(table, self)
        return table


def _parse_type(text: str) -> pa.DataType:
    text = text.replace(" ", "")
    simple = {
        "string": pa.string(),
        "int64": pa.int64(),
        "int32": pa.int32(),
        "float64": pa.float64(),
        "float32": pa.float32(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    if text in simple:
        return simple[text]
    if text.startswith("list<") and text.endswith(">"):
        return pa.list_(_parse_type(text[5:-1]))
    if text.startswith("struct<") and text.endswith(">"):
        fields = []
        for part in text[7:-1].split(","):
            name, type_text = part.split(":", 1)
            fields.append(pa.field(name, _parse_type(type_text)))
        return pa.struct(fields)
    raise ValueError(f"unknown contract type {text!r}")


@cache
def load_contract(name: str) -> Contract:
    """Load `data_contracts/<name>.yaml`."""
    path = CONTRACTS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ContractError(f"no data contract named {name!r} in {CONTRACTS_DIR}")
    text = path.read_text(encoding="utf-8")
    spec = yaml.safe_load(text)
    columns = {
        col_name: Column(
            name=col_name,
            type=_parse_type(col["type"]),
            nullable=bool(col.get("nullable", False)),
            required=bool(col.get("required", True)),
            constraints=dict(col.get("constraints") or {}),
            meaning=str(col.get("meaning", "")).strip(),
        )
        for col_name, col in spec["columns"].items()
    }
    return Contract(spec["name"], str(spec["version"]), spec.get("description", ""), columns)


def _first_bad_row(mask: pa.ChunkedArray | pa.Array) -> int:
    """Index of the first True in a boolean mask (nulls count as False)."""
    filled = pc.fill_null(mask, False)
    return int(pc.index(filled, True).as_py())


def validate(table: pa.Table, contract: Contract | str) -> None:
    """Raise ContractError unless `table` satisfies `contract` (types, nulls and constraints)."""
    if isinstance(contract, str):
        contract = load_contract(contract)
    where = f"contract {contract.name} v{contract.version}"
    extra = [n for n in table.column_names if n not in contract.columns]
    if extra:
        raise ContractError(f"{where}: columns not in the contract: {extra}")
    missing = [n for n in contract.required_columns if n not in table.column_names]
    if missing:
        raise ContractError(f"{where}: missing required columns: {missing}")
    for name in table.column_names:
        column = contract.columns[name]
        values = table.column(name)
        if not values.type.equals(column.type):
            raise ContractError(
                f"{where}: column {name!r} has type {values.type}, contract says {column.type}"
            )
        if not column.nullable and values.null_count:
            row = _first_bad_row(pc.is_null(values))
            raise ContractError(f"{where}: column {name!r} is null at row {row}")
        _check_constraints(where, column, values)


# Each row-level constraint a contract may declare: the mask of rows that break it (nulls pass: nullability
# is checked on its own), and how the error describes the first such row.
_ROW_CHECKS = {
    "pattern": (
        lambda v, arg: pc.invert(pc.match_substring_regex(v, arg)),
        "breaks pattern {arg}: {value!r}",
    ),
    "allowed": (
        lambda v, arg: pc.invert(pc.is_in(v, value_set=pa.array(arg, type=v.type))),
        "breaks allowed values {arg}: {value!r}",
    ),
    "min": (lambda v, arg: pc.less(v, arg), "is below {arg}"),
    "max": (lambda v, arg: pc.greater(v, arg), "is above {arg}"),
    "min_length": (lambda v, arg: pc.less(pc.list_value_length(v), arg), "has fewer than {arg} items"),
}


def _check_constraints(where: str, column: Column, values: pa.ChunkedArray) -> None:
    checks = column.constraints
    if not checks or len(values) == 0:
        return
    for name, (broken, message) in _ROW_CHECKS.items():
        if name not in checks:
            continue
        bad = pc.fill_null(broken(values, checks[name]), False)
        if pc.any(bad).as_py():
            row = _first_bad_row(bad)
            said = message.format(arg=checks[name], value=values[row].as_py())
            raise ContractError(f"{where}: column {column.name!r} row {row} {said}")
    if "roles" in checks:  # a list of messages: checked on the flattened messages, a null role is unknown
        roles = pc.struct_field(pc.list_flatten(values), "role")
        unknown = pc.invert(pc.is_in(roles, value_set=pa.array(checks["roles"])))
        if pc.any(pc.fill_null(unknown, True)).as_py():
            raise ContractError(f"{where}: column {column.name!r} has a role outside {checks['roles']}")
