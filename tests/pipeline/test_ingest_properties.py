"""Property tests: random JSON records and random bytes never crash ingest and always conserve rows."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest import FORMATS, IngestOptions, NotPreferenceData, ingest_source
from pipeline.ingest.fields import Limits, Reject
from pipeline.workspace import Workspace
from tests.pipeline._ingest_util import assert_conserved

# Keys the parsers look for, so random records reach deep into every format's code paths.
KEYS = [
    "prompt", "chosen", "rejected", "system", "chosen_score", "score_rejected", "conversations",
    "chosen_messages", "rejected_messages", "role", "from", "content", "value", "type", "text",
    "instruction", "input", "response1", "response2", "annotator1", "annotator2", "winner",
    "completions", "response", "overall_score", "question", "ground_truth", "is_correct", "solution",
]  # fmt: skip
ROLES = ["user", "assistant", "system", "human", "gpt", "tool", "wizard", ""]
TEXTS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(ROLES),
    st.sampled_from(["\n\nHuman: hi", "\n\nAssistant: yo", "\n\nHuman: q\n\nAssistant: a", "  ", "\r\n"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), TEXTS)
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)), children, max_size=6),
    ),
    max_leaves=25,
)
RECORDS = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=8)


@settings(max_examples=200, deadline=None)
@given(record=RECORDS, fmt=st.sampled_from(sorted(FORMATS)))
def test_parsers_only_ever_reject(record, fmt):
    """A parser returns candidate pairs with non-empty text, or raises Reject with a contract reason."""
    try:
        candidates = FORMATS[fmt](record, Limits(max_field_chars=1_000))
    except Reject as reject:
        assert reject.reason and reject.detail
        return
    assert candidates
    for candidate in candidates:
        assert candidate.prompt and candidate.chosen.strip() and candidate.rejected.strip()
        assert all(m["role"] in ("system", "user", "assistant", "tool") for m in candidate.prompt)


def _ingest(path: Path, fmt: str | None):
    with tempfile.TemporaryDirectory() as root:
        try:
            (result,) = ingest_source(
                path, Workspace.open(root), fmt=fmt, options=IngestOptions(max_field_chars=50)
            )
        except NotPreferenceData as error:  # no records / nothing detectable: a clean error naming the file
            assert path.name in str(error)
            return None
        assert_conserved(result)
        return result


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.one_of(RECORDS, JSON), min_size=1, max_size=12), fmt=st.sampled_from(sorted(FORMATS))
)
def test_random_json_records_conserve_rows(records, fmt):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        result = _ingest(path, fmt)
        assert result is not None and result.rows_read == len(records)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.just(b'{"prompt": "p", "chosen": "c", "rejected": "r"}'),
            st.just(b"\xef\xbb\xbf"),
            st.just(b"\r\n"),
        ),
        min_size=1,
        max_size=10,
    ).map(b"\n".join),
    fmt=st.sampled_from([None, "flat"]),
)
def test_random_bytes_never_crash_and_conserve(data, fmt):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bytes.jsonl"
        path.write_bytes(data)
        if not data:
            return
        result = _ingest(path, fmt)
        if result is not None:
            lines = [line for line in data.removeprefix(b"\xef\xbb\xbf").split(b"\n")]
            non_blank = [line for line in lines if line.strip(b" \t\r\n\x0b\x0c")]
            assert result.rows_read <= len(non_blank)
