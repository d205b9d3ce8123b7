"""The synthetic math pairs: deterministic, arithmetic right in chosen, one wrong line in rejected."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli.main import app
from demo.synth_math import generate_pairs, write_math_pairs

LINE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def _results(text: str) -> list[tuple[int, int, int]]:
    """(line index, right result, written result) for every computed line."""
    found = []
    for index, line in enumerate(text.splitlines()):
        match = LINE.search(line)
        if match:
            a, op, b, written = match.groups()
            found.append((index, OPS[op](int(a), int(b)), int(written)))
    return found


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_chosen_is_right_and_rejected_has_one_wrong_intermediate_line(seed: int) -> None:
    for pair in generate_pairs(5, seed):
        chosen, rejected = _results(pair.chosen), _results(pair.rejected)
        assert all(right == written for _, right, written in chosen)
        wrong = [index for index, right, written in rejected if right != written]
        assert wrong == [pair.corrupted_step]
        assert wrong[0] < len(chosen) - 1  # never the last step
        # the final answer is the same and is the last step's result
        assert (
            pair.chosen.splitlines()[-1] == pair.rejected.splitlines()[-1] == f"The answer is: {pair.answer}"
        )
        assert chosen[-1][2] == pair.answer
        assert 3 <= len(chosen) + 1 <= 5 and all(written >= 0 for _, _, written in rejected)
        # low edit distance: only one line differs
        differing = [
            a for a, b in zip(pair.chosen.splitlines(), pair.rejected.splitlines(), strict=True) if a != b
        ]
        assert len(differing) == 1


def test_deterministic_by_seed_and_unique_prompts(tmp_path: Path) -> None:
    a = write_math_pairs(tmp_path / "a.jsonl", 300, seed=7).read_bytes()
    b = write_math_pairs(tmp_path / "b.jsonl", 300, seed=7).read_bytes()
    c = write_math_pairs(tmp_path / "c.jsonl", 300, seed=8).read_bytes()
    assert a == b and a != c
    rows = [json.loads(line) for line in a.decode().splitlines()]
    assert len(rows) == 300 and set(rows[0]) == {"prompt", "chosen", "rejected"}
    assert len({row["prompt"] for row in rows}) == 300


def test_cli_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(app, ["synth", "math", "--n", "12", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 12
    assert out.read_bytes() == write_math_pairs(tmp_path / "again.jsonl", 12, seed=3).read_bytes()
