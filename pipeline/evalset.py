"""Verifiable prompt sets for generation evaluation, and the check of an eval set against training data.

A **prompt set** is a list of prompts (chat messages) each with a reference answer that a program can
verify: GSM8K-style maths whose solution ends in `#### N`, or the demo's "The answer is: N". It is built

- from a dataset version's split (`from_dataset`): the prompts of its kept pairs, the reference answer
  extracted from the *chosen* answer (pairs whose chosen answer has none are not verifiable and left
  out, counted as `unverifiable`); one row per distinct prompt;
- from a file (`from_file`): JSONL / JSON / Parquet rows with a prompt column (`question`, `prompt`,
  `instruction`, `problem`) and an answer column (`answer`, `reference`, `solution`, `chosen`): GSM8K's
  test.jsonl as it is.

Rows are ordered by a hash of their prompt (content, not file order) and cut to `max_prompts`, so the
same content gives the same subset, and the set's id `promptset-<hash>` is the hash of every row's
prompt and reference answer: equal ids mean identical prompts and answers, in any workspace.

Exact match: the *last* match of `answer_pattern` in a text (its first group, else the whole match),
normalised (`normalize_number`): `$`, spaces and thousands commas removed, a trailing `.`/`.0…`
dropped, `+` and leading zeros dropped, `-0` is `0`. A text with no match has no answer (never
correct).

No torch here (`pipeline` layer): `dpop.generate` runs the models.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from pipeline.identity import file_sha256

# `#### 1,234`, `The answer is: 42`, `the answer is $3.50` (the last one in the text counts)
DEFAULT_ANSWER_PATTERN = r"(?:####|[Tt]he (?:final )?answer is:?)\s*(-?\s*\$?\s*-?[\d,]*\.?\d+)"
PROMPT_COLUMNS = ("question", "prompt", "instruction", "problem")
ANSWER_COLUMNS = ("answer", "reference", "solution", "chosen")
ID_HEX = 16
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The answer pattern compiled, or one line saying what is wrong with it."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"answer pattern {pattern!r} is not a regular expression: {error}") from None
    if compiled.groups > 1:
        raise ValueError(f"answer pattern {pattern!r} has {compiled.groups} groups: give at most one")
    return compiled


def normalize_number(text: str) -> str:
    """A number as exact match compares it: `1,000.00` -> `1000`, `$18` -> `18`, `-0.50` -> `-0.5`.
    Text that is not a number after cleaning is returned stripped (compared as text)."""
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if not _NUMBER.match(cleaned):
        return text.strip()
    sign = "-" if cleaned.startswith("-") else ""
    body = cleaned.lstrip("+-")
    whole, _, fraction = body.partition(".")
    whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
    if whole == "0" and not fraction:
        sign = ""
    return f"{sign}{whole}" + (f".{fraction}" if fraction else "")


def extract_answer(text: str | None, pattern: str | re.Pattern[str] = DEFAULT_ANSWER_PATTERN) -> str | None:
    """The normalised final answer of `text` (the last match of `pattern`), None when it has none."""
    if not text:
        return None
    compiled = pattern if isinstance(pattern, re.Pattern) else compile_pattern(pattern)
    matches = list(compiled.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    value = last.group(1) if compiled.groups else last.group(0)
    return normalize_number(value) if value is not None and value.strip() else None


# --- prompt sets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptSet:
    """Verifiable prompts: `rows` are dicts with `prompt_key`, `prompt` (messages), `reference` (the
    reference text), `reference_answer` (normalised), `source`; `origin` says where they came from."""

    id: str
    rows: tuple[Mapping[str, Any], ...]
    origin: Mapping[str, Any]
    unverifiable: int  # rows left out because their reference has no answer
    dropped_by_limit: int  # verifiable rows beyond max_prompts

    @property
    def prompt_keys(self) -> list[str]:
        return [row["prompt_key"] for row in self.rows]


def prompt_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """A prompt's identity: its messages' roles and whitespace-normalised contents, hashed."""
    turns = [[str(m.get("role", "user")), " ".join(str(m.get("content") or "").split())] for m in messages]
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode()).hexdigest()[:32]


def prompt_set_id(rows: Iterable[Mapping[str, Any]]) -> str:
    """`promptset-<hash>` of the rows' prompts and reference answers, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row['prompt_key']}\0{row['reference_answer']}\n".encode())
    return f"promptset-{digest.hexdigest()[:ID_HEX]}"


def make_prompt_set(
    candidates: Iterable[Mapping[str, Any]], pattern: str, max_prompts: int, origin: Mapping[str, Any]
) -> PromptSet:
    """Rows {prompt (messages), reference, source} -> a PromptSet: answers extracted, unverifiable rows
    counted and left out, one row per prompt (the first), content order, cut to `max_prompts`."""
    compiled = compile_pattern(pattern)
    kept: dict[str, dict[str, Any]] = {}
    unverifiable = 0
    for row in candidates:
        answer = extract_answer(row.get("reference"), compiled)
        if answer is None:
            unverifiable += 1
            continue
        key = prompt_key(row["prompt"])
        kept.setdefault(key, {**row, "prompt_key": key, "reference_answer": answer})
    ordered = [kept[key] for key in sorted(kept)]
    rows = tuple(ordered[:max_prompts])
    return PromptSet(prompt_set_id(rows), rows, dict(origin), unverifiable, len(ordered) - len(rows))


def from_dataset(dataset_dir: Path, dataset_id: str, split: str, pattern: str, max_prompts: int) -> PromptSet:
    """The prompts of a dataset version's split, answers from the chosen answers (module doc)."""
    path = dataset_dir / "pairs.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"dataset {dataset_id} has no pairs.parquet: its prompts are unknown")
    table = pl.from_arrow(pq.read_table(path, columns=["prompt", "chosen", "source", "split"]))
    table = table.filter(pl.col("split") == split)
    rows = (
        {"prompt": row["prompt"], "reference": row["chosen"], "source": row["source"]}
        for row in table.iter_rows(named=True)
    )
    origin = {"dataset_id": dataset_id, "split": split}
    return make_prompt_set(rows, pattern, max_prompts, origin)


def from_file(path: Path, pattern: str, max_prompts: int) -> PromptSet:
    """The prompts of a question/answer file (module doc); one line naming the file when it cannot be."""
    path = Path(path).expanduser().resolve()
    frame = _read_rows(path)
    prompt_column = next((c for c in PROMPT_COLUMNS if c in frame.columns), None)
    answer_column = next((c for c in ANSWER_COLUMNS if c in frame.columns), None)
    if prompt_column is None or answer_column is None:
        raise ValueError(
            f"eval file {path}: needs a prompt column ({', '.join(PROMPT_COLUMNS)}) and an answer column "
            f"({', '.join(ANSWER_COLUMNS)}); it has {', '.join(frame.columns) or 'none'}"
        )
    rows = []
    for index, row in enumerate(frame.select(prompt_column, answer_column).iter_rows()):
        prompt, answer = row
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                f"eval file {path}: row {index}: field {prompt_column!r} is not a non-empty text"
            )
        source = path.name
        rows.append({"prompt": [{"role": "user", "content": prompt}], "reference": answer, "source": source})
    origin = {"file": str(path), "file_sha256": file_sha256(path)}
    return make_prompt_set(rows, pattern, max_prompts, origin)


def _read_rows(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"eval file {path}: no such file")
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix == ".json":
            return pl.read_json(path)
        return pl.read_ndjson(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"eval file {path}: cannot be read as JSONL/JSON/Parquet ({first})") from None


# --- the check against training data -----------------------------------------------------------------


@dataclass(frozen=True)
class Overlap:
    """How much of an eval set the training split also holds (0 and 0 is what a fair eval needs)."""

    train_dataset_id: str | None
    pairs: int  # eval pairs whose pair id is in the training split (preference eval sets)
    prompts: int  # eval prompts that are also training prompts

    def as_dict(self) -> dict[str, Any]:
        return {"train_dataset_id": self.train_dataset_id, "pairs": self.pairs, "prompts": self.prompts}

    def message(self) -> str | None:
        """A warning line when anything overlaps, else None."""
        if not (self.pairs or self.prompts):
            return None
        return (
            f"eval set overlaps the training split of {self.train_dataset_id}: {self.pairs} pair(s) and "
            f"{self.prompts} prompt(s) are in both (the metrics overstate what the model learned)"
        )


def training_prompts(dataset_dir: Path, split: str = "train") -> tuple[set[str], set[str]]:
    """(pair ids, prompt keys) of a dataset version's training split, from its pairs.parquet (empty
    sets when the version has none: a dataset written outside a build)."""
    table = _pairs_columns(dataset_dir / "pairs.parquet")
    if table is None:
        return set(), set()
    table = table.filter(pl.col("split") == split)
    keys = {prompt_key(prompt) for prompt in table.get_column("prompt").to_list()}
    return set(table.get_column("pair_id").to_list()), keys


def _pairs_columns(path: Path) -> pl.DataFrame | None:
    """pair_id, prompt and split of a dataset's pairs.parquet; None when it has no such file or columns
    (a dataset written outside a build): nothing to check against."""
    columns = ["pair_id", "prompt", "split"]
    if not path.is_file() or not set(columns) <= set(pq.read_schema(path).names):
        return None
    return pl.from_arrow(pq.read_table(path, columns=columns))


def overlap(
    train_dataset_dir: Path | None,
    train_dataset_id: str | None,
    pair_ids: Iterable[str] = (),
    prompt_keys: Iterable[str] = (),
) -> Overlap:
    """Eval pairs and prompts that the training split of `train_dataset_id` also holds."""
    if train_dataset_dir is None:
        return Overlap(train_dataset_id, 0, 0)
    train_pairs, train_prompts = training_prompts(train_dataset_dir)
    return Overlap(
        train_dataset_id,
        sum(1 for pair in set(pair_ids) if pair in train_pairs),
        sum(1 for key in set(prompt_keys) if key in train_prompts),
    )


def eval_prompt_keys(dataset_dir: Path, split: str, pair_ids: Iterable[str]) -> list[str]:
    """The prompt keys of a dataset split's pairs (for a preference eval set's overlap check)."""
    table = _pairs_columns(dataset_dir / "pairs.parquet")
    if table is None:
        return []
    wanted = set(pair_ids)
    table = table.filter((pl.col("split") == split) & pl.col("pair_id").is_in(list(wanted)))
    return [prompt_key(prompt) for prompt in table.get_column("prompt").to_list()]
