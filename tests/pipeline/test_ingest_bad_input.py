"""Bad input: per-record problems become rejections with stable reasons and the rest of the file goes
on; files that cannot be read at all fail with a message naming them and write nothing."""

from __future__ import annotations

import gzip
import json

import pytest

from pipeline.identity import pair_id
from pipeline.ingest import IngestError, IngestOptions, NotPreferenceData, ingest_source
from tests.pipeline._ingest_util import assert_conserved, pairs_of, reasons_by_row, rejections_of

GOOD = {"prompt": "p", "chosen": "c", "rejected": "r"}


def line(record) -> bytes:
    return json.dumps(record).encode() + b"\n"


def test_bad_records_are_rejected_with_reasons(tmp_path, workspace):
    path = tmp_path / "bad.jsonl"
    rows = [
        line(GOOD),  # 0 kept
        b'{"prompt": "p", "chosen": \n',  # 1 malformed JSON
        line({"prompt": "p", "chosen": "c"}),  # 2 missing rejected
        line({"prompt": "p", "chosen": None, "rejected": "r"}),  # 3 null chosen
        line({"prompt": "p", "chosen": True, "rejected": "r"}),  # 4 boolean where text belongs
        line({"prompt": "p", "chosen": "", "rejected": "r"}),  # 5 empty response
        line({"prompt": "p", "chosen": "c", "rejected": " \t\n"}),  # 6 whitespace-only response
        b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "r"}\n',  # 7 invalid UTF-8 (latin-1 byte)
        line({"prompt": "p", "chosen": "x" * 101, "rejected": "r"}),  # 8 over the size limit
        line([1, 2, 3]),  # 9 not an object
        b"\n",  # blank line: not a record
        line({"prompt": "p", "chosen": "\ud800", "rejected": "r"}),  # 11 lone surrogate escape
        line(
            {"prompt": "p", "chosen": [{"role": "assistant", "content": "c"}], "rejected": "r"}
        ),  # 12 list as text
        line(GOOD | {"prompt": "last"}),  # 13 kept: the file goes on after every bad line
    ]
    path.write_bytes(b"".join(rows))
    (result,) = ingest_source(path, workspace, fmt="flat", options=IngestOptions(max_field_chars=100))
    assert_conserved(result)
    assert result.rows_read == 13
    assert [p["source_row"] for p in pairs_of(result)] == [0, 13]
    assert reasons_by_row(result) == {
        1: "malformed_json",
        2: "missing_field",
        3: "null_field",
        4: "wrong_type",
        5: "empty_response",
        6: "empty_response",
        7: "invalid_utf8",
        8: "field_too_large",
        9: "not_an_object",
        11: "invalid_utf8",
        12: "wrong_type",
    }
    rejections = {r["source_row"]: r for r in rejections_of(result)}
    assert rejections[1]["raw"] == '{"prompt": "p", "chosen": '
    assert rejections[7]["raw"] == '{"prompt": "p", "chosen": "caf\ufffd", "rejected": "r"}'
    assert "101 characters, over the limit of 100" in rejections[8]["detail"]
    assert all(r["stage"] == "ingest" and r["pair_id"] is None for r in rejections.values())


def test_raw_record_is_bounded(tmp_path, workspace):
    path = tmp_path / "long.jsonl"
    path.write_bytes(line({"prompt": "p", "chosen": "", "rejected": "r" * 10_000}))
    (result,) = ingest_source(path, workspace, options=IngestOptions(max_raw_chars=50))
    (rejection,) = rejections_of(result)
    assert len(rejection["raw"]) == 50


def test_bom_and_crlf(tmp_path, workspace):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + b"".join(line(r).replace(b"\n", b"\r\n") for r in [GOOD, {**GOOD, "chosen": "a\r\nb"}])
    )
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert (result.rows_read, result.rows_rejected) == (2, 0)  # the BOM is not a rejection
    first, second = pairs_of(result)
    assert second["chosen"] == "a\r\nb"  # text kept exactly
    assert second["pair_id"] == pair_id(
        [{"role": "user", "content": "p"}], "a\nb", "r"
    )  # only the hash normalises


def test_bom_in_json_array_and_csv_with_crlf(tmp_path, workspace):
    array = tmp_path / "bom.json"
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).encode())
    (result,) = ingest_source(array, workspace)
    assert (result.rows_read, result.rows_kept) == (1, 1)
    table = tmp_path / "pairs.csv"
    table.write_bytes(
        b'\xef\xbb\xbfprompt,chosen,rejected\r\np,"two\r\nlines",r\r\nq,,r\r\nz,"caf\xe9",r\r\n'
    )
    (result,) = ingest_source(table, workspace)
    assert_conserved(result)
    assert [p["chosen"] for p in pairs_of(result)] == ["two\r\nlines"]
    assert reasons_by_row(result) == {1: "empty_response", 2: "invalid_utf8"}


def test_hh_transcript_without_assistant_turn(tmp_path, workspace):
    path = tmp_path / "hh.jsonl"
    records = [
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
        {"chosen": "\n\nHuman: only a question", "rejected": "\n\nHuman: only a question"},
    ]
    path.write_bytes(b"".join(line(r) for r in records))
    (result,) = ingest_source(path, workspace)
    assert result.format == "hh_rlhf"
    assert reasons_by_row(result) == {1: "no_assistant_turn"}


def test_unknown_message_role(tmp_path, workspace):
    path = tmp_path / "roles.jsonl"
    ok = [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]
    odd = [{"role": "narrator", "content": "q"}, {"role": "assistant", "content": "a"}]
    path.write_bytes(line({"chosen": ok, "rejected": ok}) + line({"chosen": odd, "rejected": odd}))
    (result,) = ingest_source(path, workspace)
    assert result.format == "trl_conversational"
    assert reasons_by_row(result) == {1: "unknown_role"}
    assert "'narrator'" in rejections_of(result)[0]["detail"]


# --- files that cannot be read at all ------------------------------------------------------------


def assert_nothing_written(workspace):
    sources = workspace.sources_dir
    assert not sources.exists() or not any(p.name != "latest" for p in sources.iterdir())


def test_truncated_gzip_fails_naming_the_file(tmp_path, workspace):
    whole = gzip.compress(b"".join(line({**GOOD, "prompt": f"p{i}" * 50}) for i in range(2_000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IngestError, match=r"cut\.jsonl\.gz: cannot read"):
        ingest_source(path, workspace)
    assert_nothing_written(workspace)


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("pairs.txt", b"prompt,chosen\n", NotPreferenceData, r"pairs\.txt: unknown file type"),
        ("empty.jsonl", b"", NotPreferenceData, r"empty\.jsonl: empty file"),
        ("blank.jsonl", b"\n \n", NotPreferenceData, r"blank\.jsonl: no JSON object records"),
        ("broken.json", b'[{"prompt": "p"', IngestError, r"broken\.json: not valid JSON"),
        ("latin.json", b'[{"prompt": "caf\xe9"}]', IngestError, r"latin\.json: not valid UTF-8"),
        ("object.json", b'{"a": 1}', NotPreferenceData, r"object\.json: a JSON object, not an array"),
    ],
)
def test_unreadable_files_fail_naming_the_file(tmp_path, workspace, name, content, error, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(error, match=message):
        ingest_source(path, workspace)
    assert_nothing_written(workspace)


def test_missing_path_fails_naming_it(tmp_path, workspace):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl: no such file"):
        ingest_source(tmp_path / "nowhere.jsonl", workspace)


def test_json_lines_in_a_json_file_are_read_as_lines(tmp_path, workspace):
    path = tmp_path / "lines.json"
    path.write_bytes(line(GOOD) + b"not json\n" + line(GOOD))
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert reasons_by_row(result) == {1: "malformed_json"}
