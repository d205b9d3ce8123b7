"""Hostile input (issue 9): a file that changes while it is read, records that defeat the parsers
(deep nesting, huge CSV fields, non-finite numbers, duplicate names), --map swaps and link loops.
Each class is fixed at its root; each test checks one class on inline fixtures."""

from __future__ import annotations

import gzip
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.catalog import Catalog
from pipeline.identity import file_sha256
from pipeline.ingest import FORMATS, IngestError, IngestOptions, ingest_source, latest_ingests
from pipeline.ingest import stage as ingest_stage
from pipeline.ingest.readers import MAX_DEPTH, SourceChanged, file_source, iter_records
from tests.pipeline._ingest_util import assert_conserved, pairs_of, reasons_by_row, rejections_of

GOOD = {"prompt": "p", "chosen": "c", "rejected": "r"}
KINDS = ["jsonl", "jsonl.gz", "json", "json.gz", "csv", "parquet", "arrow-file", "arrow-stream"]


def line(record) -> bytes:
    return json.dumps(record).encode() + b"\n"


def write(path_stem, kind: str, records: list[dict]):
    """`records` (flat, text values) written as a file of `kind`; returns its path."""
    suffix = "arrow" if kind.startswith("arrow") else kind
    path = path_stem.with_name(f"{path_stem.name}.{suffix}")
    if kind.startswith("jsonl"):
        data = b"".join(line(r) for r in records)
    elif kind.startswith("json"):
        data = json.dumps(records).encode()
    elif kind == "csv":
        data = (
            "prompt,chosen,rejected\n"
            + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in records)
        ).encode()
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=2)
        return path
    else:
        table = pa.Table.from_pylist(records)
        opener = pa.ipc.new_file if kind == "arrow-file" else pa.ipc.new_stream
        with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as writer:
            writer.write_table(table)
        return path
    path.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
    return path


def versions(count: int) -> list[list[dict]]:
    return [
        [{"prompt": f"p{v}-{i}", "chosen": f"c{v}", "rejected": f"r{v}"} for i in range(3 + v)]
        for v in range(count)
    ]


def assert_nothing_published(workspace):
    sources = workspace.sources_dir
    leftovers = [p.name for p in sources.iterdir()] if sources.exists() else []
    assert leftovers == [] or leftovers == ["latest"] and not any((sources / "latest").iterdir())
    assert latest_ingests(workspace) == []
    assert Catalog(workspace).find("pairs") == []


# --- 1. a file that changes while it is read -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_rewritten_after_its_id_hash_fails_naming_it_and_publishes_nothing(
    tmp_path, workspace, monkeypatch, kind
):
    first, second = versions(2)
    path = write(tmp_path / "data", kind, first)
    other = write(tmp_path / "other", kind, second).read_bytes()
    original = path.read_bytes()
    calls = []

    def rewrite_every_time(source):  # the seam: after the sha256 (and the id) were taken
        calls.append(source.sha256)
        path.write_bytes(other if len(calls) % 2 else original)

    monkeypatch.setattr(ingest_stage, "_before_read", rewrite_every_time)
    with pytest.raises(SourceChanged, match=rf"{path.name}: changed while it was read") as raised:
        ingest_source(path, workspace)
    assert "\n" not in str(raised.value)
    assert len(calls) == 2  # read once more (the file was identified anew), then given up
    assert_nothing_published(workspace)


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_that_changes_once_is_read_again_and_rows_match_the_digest(
    tmp_path, workspace, monkeypatch, kind
):
    first, second = versions(2)
    path = write(tmp_path / "data", kind, first)
    other = write(tmp_path / "other", kind, second).read_bytes()
    notes = []

    def rewrite_once(source):
        if not notes:
            path.write_bytes(other)

    monkeypatch.setattr(ingest_stage, "_before_read", rewrite_once)
    (result,) = ingest_source(path, workspace, on_note=notes.append)
    assert_conserved(result)
    assert any("changed while it was read; reading it again" in note for note in notes)
    assert result.source_sha256 == file_sha256(path)  # the version read, which produced the rows
    assert [p["chosen"] for p in pairs_of(result)] == ["c1"] * 4
    assert {p["source_sha256"] for p in pairs_of(result)} == {result.source_sha256}


def test_save_to_disk_folder_rewritten_after_its_id_hash_fails(tmp_path, workspace, monkeypatch):
    import datasets

    first, second = versions(2)
    datasets.Dataset.from_list(first).save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_list(second).save_to_disk(str(tmp_path / "other"))
    data_file = next((tmp_path / "saved").glob("*.arrow"))
    contents = [(tmp_path / "other" / data_file.name).read_bytes(), data_file.read_bytes()]
    calls = []

    def rewrite_every_time(source):
        calls.append(source)
        data_file.write_bytes(contents[len(calls) % 2 - 1])

    monkeypatch.setattr(ingest_stage, "_before_read", rewrite_every_time)
    with pytest.raises(SourceChanged, match="saved: changed while it was read"):
        ingest_source(tmp_path / "saved", workspace)
    assert_nothing_published(workspace)


def test_a_file_changed_in_place_mid_read_is_caught(tmp_path):
    # No seam: the reader is part-way through a file larger than its buffer when bytes near the end
    # are overwritten in place (same size, same inode), as a careless writer would.
    records = [{"prompt": f"p{i}", "chosen": "c" * 100, "rejected": "r"} for i in range(30_000)]
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"".join(line(r) for r in records))
    source = file_source(path)
    rows = iter_records(source)
    assert next(rows).value["prompt"] == "p0"
    with open(path, "r+b") as handle:
        handle.seek(-20, 2)
        handle.write(b"X" * 5)
    with pytest.raises(SourceChanged, match="big.jsonl: changed while it was read"):
        for _ in rows:
            pass


def test_the_cli_shows_a_changing_file_as_one_line(tmp_path, monkeypatch):
    path = write(tmp_path / "data", "jsonl", versions(1)[0])
    monkeypatch.setattr(
        ingest_stage, "_before_read", lambda source: path.write_bytes(path.read_bytes() + b"\n")
    )
    result = CliRunner().invoke(app, ["ingest", str(path), "-w", str(tmp_path / "ws")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "changed while it was read" in "".join(result.output.split("\n"))


# --- 2a. nesting too deep ------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_chosen(value_text: str) -> str:
    """A flat record as JSON text whose `chosen` is `value_text`, written as is."""
    return '{"prompt": "p", "chosen": ' + value_text + ', "rejected": "r"}'


def test_a_deeply_nested_jsonl_record_is_one_rejection(tmp_path, workspace):
    path = tmp_path / "deep.jsonl"
    path.write_bytes(
        line(GOOD)
        + b'{"prompt": "p", "chosen": %s, "rejected": "r"}\n' % nested(5_000).encode()
        + b'{"prompt": "p", "meta": %s, "chosen": "c", "rejected": "r"}\n' % nested(MAX_DEPTH).encode()
        + b'{"prompt": "p", "meta": %s, "chosen": "c", "rejected": "r"}\n' % nested(MAX_DEPTH - 1).encode()
        + line(GOOD)
    )
    (result,) = ingest_source(path, workspace, fmt="flat")
    assert_conserved(result)
    # The record is level 1, so a value nested MAX_DEPTH lists inside it is one level too deep.
    assert reasons_by_row(result) == {1: "too_deep", 2: "too_deep"}
    assert result.rows_kept == 3
    assert "line 2" in rejections_of(result)[0]["detail"]


def test_a_deep_element_of_a_json_array_is_isolated(tmp_path, workspace):
    # Choice: the array is decoded element by element when the whole-file parse fails, so only the
    # deep element is rejected (rather than failing the file).
    path = tmp_path / "deep.json"
    deep = with_chosen(nested(5_000))
    medium = with_chosen(nested(MAX_DEPTH + 5))
    path.write_text(f"[{json.dumps(GOOD)}, {deep},\n {medium} , {json.dumps(GOOD)}]")
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert reasons_by_row(result) == {1: "too_deep", 2: "too_deep"}
    assert [p["source_row"] for p in pairs_of(result)] == [0, 3]
    last = tmp_path / "deep_last.json"  # the deep value's closing brackets run into the array's
    last.write_text(f'[{json.dumps(GOOD)}, {{"meta": {nested(1_000_000)}}}]')
    (result,) = ingest_source(last, workspace, fmt="flat")
    assert reasons_by_row(result) == {1: "too_deep"} and result.rows_kept == 1


def test_a_deep_invalid_json_array_still_fails_as_invalid(tmp_path, workspace):
    path = tmp_path / "bad.json"
    path.write_text(f"[{json.dumps(GOOD)}, {nested(3_000)}, {{]")
    with pytest.raises(IngestError, match=r"bad\.json: not valid JSON"):
        ingest_source(path, workspace)


def test_recursion_anywhere_in_parsing_rejects_that_record_only(tmp_path, workspace, monkeypatch):
    real_parse = FORMATS["flat"]

    def recurses_on_p1(record, limits):
        if record["prompt"] == "p1":
            raise RecursionError("maximum recursion depth exceeded")
        return real_parse(record, limits)

    monkeypatch.setitem(FORMATS, "flat", recurses_on_p1)
    path = write(tmp_path / "d", "jsonl", [GOOD | {"prompt": f"p{i}"} for i in range(3)])
    (result,) = ingest_source(path, workspace, fmt="flat")
    assert_conserved(result)
    assert reasons_by_row(result) == {1: "too_deep"}


# --- 2b. CSV fields over the csv module's limit ---------------------------------------------------


def test_a_csv_field_over_the_limit_is_one_rejection_and_the_limit_follows_the_option(tmp_path, workspace):
    long = "x" * 200_000  # over both the csv module's default limit (131,072) and the default option
    quoted = ('a ""quoted"" line\n' * 12_000).rstrip("\n")  # a multi-line quoted field, also too long
    path = tmp_path / "long.csv"
    path.write_text(f'prompt,chosen,rejected\np,c,r\np,{long},r\np,c2,r\np,"{quoted}",r\np,c3,r\n')
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert reasons_by_row(result) == {1: "field_too_large", 3: "field_too_large"}
    assert [p["chosen"] for p in pairs_of(result)] == ["c", "c2", "c3"]
    assert "over the limit of 100,000 characters" in rejections_of(result)[0]["detail"]
    (raised,) = ingest_source(path, workspace, options=IngestOptions(max_field_chars=300_000))
    assert_conserved(raised)
    assert raised.rows_kept == 5 and raised.rows_rejected == 0
    (unbounded,) = ingest_source(path, workspace, options=IngestOptions(max_field_chars=10**20))
    assert unbounded.rows_kept == 5  # beyond a C long, the csv limit is the largest it can be


# --- 2c. numbers that are not finite --------------------------------------------------------------


def test_non_finite_and_huge_scores_are_rejected_never_kept(tmp_path, workspace):
    path = tmp_path / "scores.jsonl"
    tokens = ["NaN", "Infinity", "-Infinity", "1e999", "9" * 400, "-" + "9" * 400, "9" * 5_000, "4.5"]
    path.write_text(
        "".join(f'{{"prompt": "p", "chosen": "c", "rejected": "r", "chosen_score": {t}}}\n' for t in tokens)
    )
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert reasons_by_row(result) == dict.fromkeys(range(7), "bad_number")
    assert [p["chosen_score"] for p in pairs_of(result)] == [4.5]


def test_scored_completions_with_nan_never_make_a_pair(tmp_path, workspace):
    # Before: NaN compares false with everything, so max and min both returned the first completion
    # and a pair of one text against itself (scores NaN) was kept while the real preference was lost.
    path = tmp_path / "uf.jsonl"
    path.write_text(
        '{"prompt": "p", "completions": [{"text": "a", "score": NaN}, {"text": "b", "score": 9}, {"text": "c", "score": 1}]}\n'
        '{"prompt": "p", "completions": [{"text": "a", "score": 1e999}, {"text": "b", "score": 2}]}\n'
        '{"prompt": "p", "completions": [{"text": "a", "score": 3}, {"text": "b", "score": "nan"}]}\n'
        '{"prompt": "p", "completions": [{"text": "a", "score": "7"}, {"text": "b", "score": -2}]}\n'
    )
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert reasons_by_row(result) == {0: "bad_number", 1: "bad_number", 2: "bad_number"}
    (pair,) = pairs_of(result)
    assert (pair["chosen"], pair["rejected"], pair["chosen_score"], pair["rejected_score"]) == (
        "a",
        "b",
        7.0,
        -2.0,
    )


def test_labels_and_correctness_flags_that_are_not_values(tmp_path, workspace):
    judgement = {"instruction": "i", "response1": "a", "response2": "b"}
    path = tmp_path / "labels.jsonl"
    path.write_text(
        "".join(
            json.dumps(judgement)[:-1] + f', "annotator1": {token}}}\n'
            for token in ["NaN", "Infinity", "1e999", "9" * 400, "[1]", '{"a": 1}', "1", "2.0"]
        )
    )
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert reasons_by_row(result) == dict.fromkeys(range(6), "invalid_label")
    solutions = tmp_path / "solutions.jsonl"
    base = '{"question": "q", "ground_truth": "g", "m": {"is_correct": %s, "solution": "w"}}\n'
    solutions.write_text("".join(base % t for t in ["NaN", "0", '"false"', "1e999", "false", "null"]))
    (result,) = ingest_source(solutions, workspace)
    assert_conserved(result)
    assert reasons_by_row(result) == {
        0: "wrong_type",
        1: "wrong_type",
        2: "wrong_type",
        3: "wrong_type",
        5: "no_preference",
    }


def test_csv_scores_are_numbers_written_as_text(tmp_path, workspace):
    path = tmp_path / "scored.csv"
    path.write_text(
        "prompt,chosen,rejected,chosen_score,rejected_score\n"
        "p,c,r,4.5,1\np,c,r,,\np,c,r,nan,1\np,c,r,1e999,1\np,c,r,high,1\n"
    )
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert reasons_by_row(result) == {2: "bad_number", 3: "bad_number", 4: "wrong_type"}
    assert [(p["chosen_score"], p["rejected_score"]) for p in pairs_of(result)] == [(4.5, 1.0), (None, None)]


def test_parquet_nan_scores_are_rejected(tmp_path, workspace):
    path = tmp_path / "scores.parquet"
    scores = [1.0, math.nan, math.inf, -math.inf, None]
    pq.write_table(
        pa.Table.from_pylist([GOOD | {"chosen_score": s, "rejected_score": 0.0} for s in scores]), path
    )
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert reasons_by_row(result) == {1: "bad_number", 2: "bad_number", 3: "bad_number"}


# --- 2d. duplicate names, --map, option bounds ----------------------------------------------------


def test_duplicate_columns_fail_naming_the_file_and_column(tmp_path, workspace):
    csv_path = tmp_path / "dup.csv"
    csv_path.write_text("prompt,chosen,rejected,chosen\np,c,r,other\n")
    with pytest.raises(IngestError, match=r"dup\.csv: column 'chosen' appears 2 times"):
        ingest_source(csv_path, workspace)
    parquet_path = tmp_path / "dup.parquet"
    table = pa.table([["p"], ["c"], ["r"], ["other"]], names=["prompt", "chosen", "rejected", "chosen"])
    pq.write_table(table, parquet_path)
    with pytest.raises(IngestError, match=r"dup\.parquet: column 'chosen' appears 2 times"):
        ingest_source(parquet_path, workspace)
    assert_nothing_published(workspace)
    unnamed = tmp_path / "trailing_commas.csv"  # unnamed columns cannot be read, so they may repeat
    unnamed.write_text("prompt,chosen,rejected,,\np,c,r,,\n")
    (result,) = ingest_source(unnamed, workspace)
    assert result.rows_kept == 1


def test_a_json_record_with_a_duplicate_key_is_one_rejection(tmp_path, workspace):
    path = tmp_path / "dup.jsonl"
    path.write_text(line(GOOD).decode() + '{"prompt": "p", "chosen": "c", "chosen": "x", "rejected": "r"}\n')
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert reasons_by_row(result) == {1: "duplicate_key"}
    assert "'chosen' appears 2 times" in rejections_of(result)[0]["detail"]
    array = tmp_path / "dup.json"
    duplicate = with_chosen('"c", "rejected": "y"')
    array.write_text(f"[{duplicate}, {json.dumps(GOOD)}]")
    (result,) = ingest_source(array, workspace)
    assert reasons_by_row(result) == {0: "duplicate_key"} and result.rows_kept == 1


def test_map_renames_apply_at_once_so_a_swap_swaps(tmp_path, workspace):
    path = write(tmp_path / "d", "jsonl", [GOOD])
    options = IngestOptions(column_map={"chosen": "rejected", "rejected": "chosen"})
    (result,) = ingest_source(path, workspace, options=options)
    (pair,) = pairs_of(result)
    assert (pair["chosen"], pair["rejected"]) == ("r", "c")
    cli = CliRunner().invoke(
        app, ["ingest", str(path), "-w", str(tmp_path / "ws2"), "--map", "chosen=rejected,rejected=chosen"]
    )
    assert cli.exit_code == 0, cli.output
    twice = CliRunner().invoke(
        app, ["ingest", str(path), "-w", str(tmp_path / "ws2"), "--map", "chosen=a,chosen=b"]
    )
    assert twice.exit_code == 1 and "--map: chosen is mapped twice" in twice.output


def test_max_field_chars_must_be_positive(tmp_path):
    for bad in (0, -5):
        with pytest.raises(ValueError, match="max_field_chars must be an integer >= 1"):
            IngestOptions(max_field_chars=bad)
    with pytest.raises(ValueError, match="batch_rows"):
        IngestOptions(batch_rows=0)
    path = write(tmp_path / "d", "jsonl", [GOOD])
    result = CliRunner().invoke(
        app, ["ingest", str(path), "-w", str(tmp_path / "ws"), "--max-field-chars", "0"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--max-field-chars must be a positive number" in result.output


# --- 2e. links ----------------------------------------------------------------------------------


def test_a_folder_with_link_loops_skips_them_and_lists_each_file_once(tmp_path, workspace):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    write(folder / "a", "jsonl", [GOOD])
    write(folder / "sub" / "b", "jsonl", [GOOD | {"prompt": "b"}])
    (folder / "loop1.jsonl").symlink_to("loop2.jsonl")
    (folder / "loop2.jsonl").symlink_to("loop1.jsonl")
    (folder / "dangling.jsonl").symlink_to("nowhere.jsonl")
    (folder / "sub" / "up").symlink_to("..")  # a folder loop
    (folder / "same.jsonl").symlink_to("a.jsonl")  # the same file twice
    (folder / "again").symlink_to("sub")  # the same folder twice
    notes = []
    results = ingest_source(folder, workspace, on_note=notes.append)
    assert sorted(r.source_uri.rsplit("/", 2)[-1] for r in results) == ["a.jsonl", "b.jsonl"]
    joined = "\n".join(notes)
    for name in ("loop1.jsonl", "loop2.jsonl", "dangling.jsonl"):
        assert f"{name}: a link that loops or points nowhere" in joined
    assert "same.jsonl: the same file as" in joined
    assert "up: the same folder as" in joined and "again: the same folder as" not in joined
    assert "sub: the same folder as" in joined  # `again` sorts first, so the real `sub` is the repeat
    with pytest.raises(FileNotFoundError, match="loop1.jsonl: a link that loops or points nowhere"):
        ingest_source(folder / "loop1.jsonl", workspace)
