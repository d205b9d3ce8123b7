"""Format detection from the keys and value shapes of a file's first records.

The rules are checked in order (most specific first) against the first decodable object records;
the format most of them match wins. A file whose records match no rule fails with a message naming
the file and listing its keys, so the user can pass `--format` and `--map`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pipeline.ingest.formats import ASSISTANT, RESPONSE_FIELDS
from pipeline.ingest.readers import NotPreferenceData, RawRecord

SAMPLE_RECORDS = 50

# Key sets of common supervised (non-preference) data, to say clearly what a file is.
SUPERVISED_HINTS = (
    ({"question", "answer"}, "question/answer pairs"),
    ({"instruction", "output"}, "instruction/output (Alpaca-style) examples"),
    ({"messages"}, "single conversations"),
    ({"text"}, "plain text"),
)


def detect_record(record: dict) -> str | None:
    """The format one record looks like, or None."""
    keys = set(record)
    if {"chosen_messages", "rejected_messages"} <= keys:
        return "chosen_rejected_messages"
    if {"conversations", "chosen", "rejected"} <= keys:
        return "sharegpt"
    if "completions" in keys and isinstance(record["completions"], list) and keys & {"prompt", "instruction"}:
        return "scored_completions"
    if any(first in keys and second in keys for first, second in RESPONSE_FIELDS):
        return "pairwise_judgement"
    if (
        "question" in keys
        and "ground_truth" in keys
        and any(isinstance(v, dict) and "is_correct" in v for v in record.values())
    ):
        return "model_solutions"
    if {"chosen", "rejected"} <= keys:
        chosen = record["chosen"]
        if isinstance(chosen, list):
            return "trl_conversational"
        if "prompt" in keys:
            return "flat"
        if isinstance(chosen, str) and ASSISTANT in chosen:
            return "hh_rlhf"
    return None


def detect_format(records: Iterable[RawRecord], where: str) -> str:
    """The format of a source from its first records; raises NotPreferenceData naming `where`."""
    votes: Counter[str] = Counter()
    key_counts: Counter[frozenset] = Counter()
    seen = 0
    for record in records:
        if record.error is not None or not isinstance(record.value, dict):
            continue
        seen += 1
        key_counts[frozenset(map(str, record.value))] += 1
        fmt = detect_record(record.value)
        if fmt is not None:
            votes[fmt] += 1
        if seen >= SAMPLE_RECORDS:
            break
    if votes:
        return votes.most_common(1)[0][0]
    if not seen:
        raise NotPreferenceData(
            f"{where}: no JSON object records in the first rows, cannot detect the format"
        )
    keys = set(key_counts.most_common(1)[0][0])
    hint = next((what for needed, what in SUPERVISED_HINTS if needed <= keys), None)
    what = f"look like {hint}, not preference pairs" if hint else "match no preference format"
    raise NotPreferenceData(
        f"{where}: records with fields {sorted(keys)} {what}; "
        "pass --format NAME (and --map prompt=...,chosen=...,rejected=...) if it is preference data"
    )
