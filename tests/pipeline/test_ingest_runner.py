"""The ingest runner: file types, folders, re-ingest reuse, atomic outputs, catalog and latest ingests."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.catalog import Catalog
from pipeline.contracts import validate
from pipeline.identity import file_sha256
from pipeline.ingest import FORMATS, IngestOptions, NotPreferenceData, ingest_source, latest_ingests
from pipeline.ingest import stage as ingest_stage
from tests.pipeline._ingest_util import assert_conserved, pairs_of, write_jsonl

RECORDS = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(5)]
EXPECTED = [({"role": "user", "content": f"p{i}"}, f"c{i}", f"r{i}") for i in range(5)]


def triples(result):
    return [(p["prompt"][0], p["chosen"], p["rejected"]) for p in pairs_of(result)]


def test_outputs_satisfy_contracts_and_ingest_json(tmp_path, workspace):
    (result,) = ingest_source(write_jsonl(tmp_path / "a.jsonl", RECORDS + ["oops"]), workspace)
    validate(pq.read_table(result.pairs_path), "preference_pair")
    validate(pq.read_table(result.rejections_path), "rejection")
    folder = workspace.sources_dir / result.ingest_id
    assert sorted(p.name for p in folder.iterdir()) == [
        "ingest.json",
        "pairs.parquet",
        "rejections.parquet",
        "stage.json",
    ]
    manifest = json.loads((folder / "ingest.json").read_text())
    assert manifest["complete"] is True
    assert (manifest["rows_read"], manifest["rows_kept"], manifest["rows_rejected"]) == (6, 5, 1)
    assert manifest["source_sha256"] == file_sha256(tmp_path / "a.jsonl")


@pytest.mark.parametrize(
    "kind", ["jsonl.gz", "json.gz", "json", "parquet", "csv", "arrow-file", "arrow-stream"]
)
def test_file_types(tmp_path, workspace, kind):
    table = pa.Table.from_pylist(RECORDS)
    if kind == "jsonl.gz":
        path = tmp_path / "d.jsonl.gz"
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in RECORDS).encode()))
    elif kind in ("json", "json.gz"):
        path = tmp_path / f"d.{kind}"
        data = json.dumps(RECORDS).encode()
        path.write_bytes(gzip.compress(data) if kind.endswith("gz") else data)
    elif kind == "parquet":
        path = tmp_path / "d.parquet"
        pq.write_table(table, path, row_group_size=2)
    elif kind == "csv":
        path = tmp_path / "d.csv"
        path.write_text("prompt,chosen,rejected\n" + "".join(f"p{i},c{i},r{i}\n" for i in range(5)))
    else:
        path = tmp_path / "d.arrow"
        opener = pa.ipc.new_file if kind == "arrow-file" else pa.ipc.new_stream
        with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=2):
                writer.write_batch(batch)
    (result,) = ingest_source(path, workspace)
    assert_conserved(result)
    assert (result.format, result.rows_read, result.source_name) == ("flat", 5, "d")
    assert triples(result) == EXPECTED
    assert [p["source_row"] for p in pairs_of(result)] == list(range(5))


def test_save_to_disk_folder_and_dataset_dict(tmp_path, workspace):
    import datasets

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "saved"))
    (result,) = ingest_source(tmp_path / "saved", workspace)
    assert_conserved(result)
    assert triples(result) == EXPECTED
    assert result.source_uri == (tmp_path / "saved").resolve().as_uri()
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(RECORDS[:3]), "test": datasets.Dataset.from_list(RECORDS[3:])}
    )
    splits.save_to_disk(str(tmp_path / "splits"))
    results = ingest_source(tmp_path / "splits", workspace)
    assert sorted((r.source_name, r.rows_kept) for r in results) == [("test", 2), ("train", 3)]


def test_hub_name_offline_fails_with_one_clear_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "ingest",
            "someone/no-such-dataset",
            "--workspace",
            str(tmp_path / "ws"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert completed.returncode == 1
    message = " ".join(completed.stderr.split())
    assert "someone/no-such-dataset: cannot load Hugging Face dataset" in message
    assert "Traceback" not in completed.stderr


def test_folder_skips_non_data_with_notes(tmp_path, workspace):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "pairs.jsonl", RECORDS)
    write_jsonl(folder / "qa.jsonl", [{"question": "q", "answer": "a"}])
    (folder / "README.md").write_text("# data")
    (folder / "info.yaml").write_text("a: 1")
    (folder / "dataset_info.json").write_text('{"name": {"file_name": "pairs.jsonl"}}')
    (folder / ".tmp-pairs.jsonl-123").write_text("half written")
    notes = []
    (result,) = ingest_source(folder, workspace, on_note=notes.append)
    assert result.source_name == "pairs"
    joined = "\n".join(notes)
    for name in ("README.md", "info.yaml", "dataset_info.json", "qa.jsonl"):
        assert name in joined
    assert ".tmp-" not in joined
    assert "question/answer" in joined
    with pytest.raises(NotPreferenceData, match="no preference data files"):
        ingest_source(_only_readme(tmp_path), workspace)


def _only_readme(tmp_path):
    folder = tmp_path / "docs_only"
    folder.mkdir()
    (folder / "README.md").write_text("# nothing here")
    return folder


def test_reingest_unchanged_file_is_reused_without_reading(tmp_path, workspace, monkeypatch):
    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    (first,) = ingest_source(path, workspace)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.pairs_path.parent.iterdir()}

    def no_reading(source):
        raise AssertionError("an unchanged file was read again")

    monkeypatch.setattr(ingest_stage, "iter_records", no_reading)
    (second,) = ingest_source(path, workspace)
    assert second.reused and not first.reused
    assert second.ingest_id == first.ingest_id
    assert (second.rows_read, second.rows_kept, second.pairs_written) == (5, 5, 5)
    assert {p.name: p.stat().st_mtime_ns for p in first.pairs_path.parent.iterdir()} == stamps
    monkeypatch.undo()
    (other,) = ingest_source(path, workspace, options=IngestOptions(max_field_chars=10))
    assert other.ingest_id != first.ingest_id and not other.reused


def test_latest_follows_the_last_ingest_of_each_uri(tmp_path, workspace):
    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    (v1,) = ingest_source(path, workspace)
    write_jsonl(path, RECORDS[:2])
    (v2,) = ingest_source(path, workspace)
    write_jsonl(tmp_path / "b.jsonl", RECORDS[:1])
    ingest_source(tmp_path / "b.jsonl", workspace)
    latest = latest_ingests(workspace)
    assert [(r.source_name, r.ingest_id, r.rows_read) for r in latest] == [
        ("a", v2.ingest_id, 2),
        ("b", latest[1].ingest_id, 1),
    ]
    write_jsonl(path, RECORDS)  # back to the first version: reused, and latest again
    (again,) = ingest_source(path, workspace)
    assert again.reused and again.ingest_id == v1.ingest_id
    assert latest_ingests(workspace)[0].ingest_id == v1.ingest_id


def test_catalog_records_source_pairs_and_rejections(tmp_path, workspace):
    (result,) = ingest_source(
        write_jsonl(tmp_path / "a.jsonl", RECORDS + [{"prompt": "p"}]), workspace, name="demo"
    )
    catalog = Catalog(workspace)
    source = catalog.get(result.source_sha256)
    # the source file is the stage's input: its absolute path, its URI (what pair rows name) in meta
    assert (source.kind, source.uri, source.meta["uri"], source.meta["name"]) == (
        "source_file",
        str(tmp_path / "a.jsonl"),
        result.source_uri,
        "demo",
    )
    pairs = catalog.get(f"pairs-{result.ingest_id}")
    assert pairs.meta["format"] == "flat"
    rejections = catalog.get(f"rejections-{result.ingest_id}")
    assert (pairs.kind, pairs.rows, rejections.kind, rejections.rows) == ("pairs", 5, "rejections", 1)
    assert catalog.parents(pairs.id) == [(result.source_sha256, "ingested_from")]
    assert catalog.parents(rejections.id) == [(result.source_sha256, "ingested_from")]
    assert pairs_of(result)[0]["source"] == "demo:flat"


def test_batches_stream_into_row_groups(tmp_path, workspace):
    records = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r"} for i in range(1_000)]
    (result,) = ingest_source(
        write_jsonl(tmp_path / "big.jsonl", records), workspace, options=IngestOptions(batch_rows=100)
    )
    assert pq.ParquetFile(result.pairs_path).num_row_groups == 10
    assert_conserved(result)


def test_failure_mid_write_leaves_nothing(tmp_path, workspace, monkeypatch):
    records = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r"} for i in range(1_000)]
    path = write_jsonl(tmp_path / "big.jsonl", records)
    real_parse = FORMATS["flat"]

    def dies_at_row_700(record, limits):
        if record["prompt"] == "p700":
            raise RuntimeError("simulated crash")
        return real_parse(record, limits)

    monkeypatch.setitem(FORMATS, "flat", dies_at_row_700)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest_source(path, workspace, options=IngestOptions(batch_rows=100))
    leftovers = list(workspace.sources_dir.rglob("*")) if workspace.sources_dir.exists() else []
    assert leftovers == []  # no final folder, no temporary folder, no latest pointer
    assert latest_ingests(workspace) == []
    assert Catalog(workspace).find("pairs") == []
    monkeypatch.undo()
    (result,) = ingest_source(path, workspace)  # the next run starts clean and completes
    assert not result.reused and result.rows_kept == 1_000


def test_killed_writer_leftovers_are_never_read(tmp_path, workspace):
    # A killed process leaves `.tmp-<id>-xxxx/` with a pairs.parquet but no stage record (written
    # last); neither latest_ingests nor a re-ingest may take it for a whole ingest.
    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    (result,) = ingest_source(path, workspace)
    final = workspace.sources_dir / result.ingest_id
    (final / "stage.json").unlink()  # as if the writer died before the record
    assert latest_ingests(workspace) == []
    (again,) = ingest_source(path, workspace)
    assert not again.reused and (final / "ingest.json").is_file() and (final / "stage.json").is_file()
    for folder in workspace.sources_dir.iterdir():
        assert (
            folder.name == "latest"
            or (folder / "stage.json").is_file()
            or not (folder / "pairs.parquet").exists()
        )


def test_conservation_violation_raises(tmp_path, workspace, monkeypatch):
    real_parse = FORMATS["flat"]
    monkeypatch.setitem(
        FORMATS, "flat", lambda record, limits: real_parse(record, limits) if record["prompt"] != "p1" else []
    )
    with pytest.raises(RuntimeError, match="conservation check failed"):
        ingest_source(write_jsonl(tmp_path / "a.jsonl", RECORDS), workspace)
    assert not any(workspace.sources_dir.glob("*/ingest.json"))


def test_a_copy_elsewhere_is_its_own_ingest_with_its_own_uri(tmp_path, workspace):
    first = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    (tmp_path / "copy").mkdir()
    second = write_jsonl(tmp_path / "copy" / "a.jsonl", RECORDS)
    (one,) = ingest_source(first, workspace)
    (two,) = ingest_source(second, workspace)
    assert one.source_sha256 == two.source_sha256 and one.ingest_id != two.ingest_id and not two.reused
    assert {p["source_uri"] for p in pairs_of(two)} == {second.resolve().as_uri()}
    assert [r.source_uri for r in latest_ingests(workspace)] == sorted(
        [first.resolve().as_uri(), second.resolve().as_uri()]
    )
