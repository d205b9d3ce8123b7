"""MetaMath-style arithmetic word problems as low-edit preference pairs (the embedded demo data).

Each problem is a short story: a starting quantity and two to four operations on it (buy more,
give away, multiply, share equally), asked as "how many now?". The chosen answer solves it step by
step, one line per operation ("... so she has 36 - 7 = 29 apples."), and ends with MetaMath's
"The answer is: N". The rejected answer is the same text with ONE intermediate result replaced by a
wrong number while every other line, and the final answer, stay as they were. That is how the Smaug
paper (Pal et al., arXiv 2402.13228, section 5) built its MetaMath pairs: chosen and rejected differ by
a few characters, the regime where DPO lowers the likelihood of the preferred answer.

Deterministic: the same seed gives the same problems, byte for byte.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import atomic_file

NAMES = [
    ("Natalia", "she"),
    ("Weng", "she"),
    ("Betty", "she"),
    ("Julie", "she"),
    ("Maria", "she"),
    ("Priya", "she"),
    ("Aiko", "she"),
    ("Fatima", "she"),
    ("James", "he"),
    ("Tom", "he"),
    ("Omar", "he"),
    ("Carlos", "he"),
    ("Lukas", "he"),
    ("Kwame", "he"),
    ("Ivan", "he"),
    ("Ben", "he"),
]
ITEMS = [
    "apples",
    "pencils",
    "stickers",
    "marbles",
    "cookies",
    "books",
    "stamps",
    "shells",
    "cards",
    "eggs",
    "oranges",
    "coins",
    "balloons",
    "crayons",
    "buttons",
    "beads",
]
FRIENDS = ["a friend", "her brother", "his sister", "a neighbour", "the teacher", "a classmate", "grandma"]
CONTAINERS = ["boxes", "bags", "packs", "jars", "crates", "baskets"]


@dataclass(frozen=True)
class Step:
    """One line of the solution: the question's sentence and the answer's computed line."""

    question: str
    before: str  # answer text up to the result, e.g. "so she has 36 - 7 = "
    result: int
    after: str  # answer text after the result, e.g. " apples."


@dataclass(frozen=True)
class MathPair:
    prompt: str
    chosen: str
    rejected: str
    answer: int
    corrupted_step: int

    def as_record(self) -> dict[str, str]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def _opening(rng: random.Random, name: str, item: str) -> tuple[Step, int]:
    """The starting quantity, either given or as packs times size (itself a step)."""
    packs, size = rng.randint(2, 9), rng.randint(3, 15)
    container = rng.choice(CONTAINERS)
    total = packs * size
    step = Step(
        question=f"{name} buys {packs} {container} of {item} with {size} {item} in each.",
        before=f"{name} buys {packs} {container} with {size} {item} each, so {name} has {packs} * {size} = ",
        result=total,
        after=f" {item}.",
    )
    return step, total


def _operation(rng: random.Random, name: str, pronoun: str, item: str, current: int) -> tuple[Step, int]:
    """One operation on the current quantity; always leaves a positive whole number."""
    kinds = ["add", "sub", "mul"] + (["div"] if any(current % k == 0 for k in (2, 3, 4, 5)) else [])
    if current <= 2:
        kinds = ["add", "mul"]
    kind = rng.choice(kinds)
    subject = pronoun.capitalize()
    if kind == "add":
        amount = rng.randint(2, 30)
        new = current + amount
        return Step(
            f"{subject} then gets {amount} more {item}.",
            f"After getting {amount} more, {pronoun} has {current} + {amount} = ",
            new,
            f" {item}.",
        ), new
    if kind == "sub":
        amount = rng.randint(1, current - 1)
        friend = rng.choice(FRIENDS)
        new = current - amount
        return Step(
            f"{subject} gives {amount} {item} to {friend}.",
            f"After giving {amount} to {friend}, {pronoun} has {current} - {amount} = ",
            new,
            f" {item}.",
        ), new
    if kind == "mul":
        factor = rng.randint(2, 4)
        word = {2: "twice", 3: "three times", 4: "four times"}[factor]
        new = current * factor
        return Step(
            f"Later {pronoun} ends up with {word} as many {item} as {pronoun} had.",
            f"{word.capitalize()} as many means {current} * {factor} = ",
            new,
            f" {item}.",
        ), new
    divisor = rng.choice([k for k in (2, 3, 4, 5) if current % k == 0])
    new = current // divisor
    return Step(
        f"{subject} packs them equally into {divisor} bags and keeps only one bag.",
        f"One bag holds {current} / {divisor} = ",
        new,
        f" {item}, so that is what {pronoun} keeps.",
    ), new


def _wrong_value(rng: random.Random, right: int) -> int:
    """A plausible wrong intermediate result: off by a small amount, never equal, never negative."""
    while True:
        wrong = right + rng.choice([-1, 1]) * rng.randint(1, max(3, right // 5))
        if wrong != right and wrong >= 0:
            return wrong


def make_pair(rng: random.Random) -> MathPair:
    """One problem with its step-by-step solution and a copy with one intermediate result wrong."""
    name, pronoun = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    first, current = _opening(rng, name, item)
    steps = [first]
    for _ in range(rng.randint(1, 3)):
        step, current = _operation(rng, name, pronoun, item, current)
        steps.append(step)
    prompt = " ".join(step.question for step in steps) + f" How many {item} does {name} have now?"
    final = f"The answer is: {current}"

    def render(wrong_index: int | None, wrong_value: int | None) -> str:
        lines = [
            f"{s.before}{wrong_value if i == wrong_index else s.result}{s.after}" for i, s in enumerate(steps)
        ]
        return "\n".join([*lines, final])

    # Only an intermediate line is corrupted (never the last step, whose result is the final answer),
    # and later lines keep the right numbers: the error does not propagate, as in the paper's pairs.
    corrupted = rng.randrange(len(steps) - 1)
    rejected = render(corrupted, _wrong_value(rng, steps[corrupted].result))
    return MathPair(prompt, render(None, None), rejected, current, corrupted)


def generate_pairs(n: int, seed: int = 0) -> Iterator[MathPair]:
    """`n` pairs, deterministic by `seed`; prompts are unique (a repeat is redrawn)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < n:
        pair = make_pair(rng)
        if pair.prompt in seen:
            continue
        seen.add(pair.prompt)
        yield pair


def write_math_pairs(out: str | os.PathLike[str], n: int, seed: int = 0) -> Path:
    """Write `n` pairs as flat JSONL (`prompt`, `chosen`, `rejected`), atomically; returns the path."""
    out = Path(out)
    with atomic_file(out) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for pair in generate_pairs(n, seed):
            handle.write(json.dumps(pair.as_record(), ensure_ascii=False) + "\n")
    return out
