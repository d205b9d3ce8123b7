"""On a workspace made by the real commands (ingest, tokenizer, tiny model, build, refs, train, then a
refresh that adds a file): per source, `pairs` holds what `dpop build` printed it kept, before and after
`dpop refs` and training and after the refresh; and after the catalog is damaged and `dpop catalog
rebuild` recreates it, every view and `dpop lineage` of the model answer as before."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cli.main import app
from demo.synth_math import write_math_pairs
from pipeline.sql import query
from pipeline.workspace import Workspace
from tests.pipeline.test_catalog_rebuild import views_snapshot

pytestmark = pytest.mark.slow

runner = CliRunner()
KEPT = re.compile(r"(\d[\d,]*) pairs kept of (\d[\d,]*)")


def _dpop(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _source(path: Path, seed: int, n: int) -> Path:
    """Synthetic maths pairs plus a malformed line (an ingest rejection) and a repeated pair (curation)."""
    write_math_pairs(path, n, seed)
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines, "{not json", lines[0]]) + "\n", encoding="utf-8")
    return path


def _build(ws: Workspace, config: Path, model: Path) -> tuple[str, int]:
    output = _dpop("build", "-w", str(ws.root), "-c", str(config), "-t", str(model))
    kept = int(KEPT.search(output).group(1).replace(",", ""))
    return output.strip().splitlines()[-1], kept


def _check_pairs(ws: Workspace, dataset_id: str, printed_kept: int) -> None:
    """Per source, `pairs` has the rows the build kept (its pairs.parquet), summing to what it printed."""
    kept = pl.read_parquet(ws.dataset_dir(dataset_id) / "pairs.parquet").group_by("source_uri").len()
    per_source = dict(query(ws, "SELECT source_uri, count(*) FROM pairs GROUP BY ALL").iter_rows())
    assert per_source == dict(kept.iter_rows())
    assert sum(per_source.values()) == printed_kept


def test_true_counts_and_rebuild_on_a_real_workspace(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "curate.yaml"
    config.write_text("split: {eval_fraction: 0.2}\ntokenize: {max_length: 256, max_prompt_length: 128}\n")
    first, second = _source(data / "first.jsonl", 1, 24), _source(data / "second.jsonl", 2, 16)
    _dpop("ingest", str(first), str(second), "-w", str(ws.root))
    tokenizer, model = ws.models_dir / "tok", ws.models_dir / "tiny"
    _dpop("tokenizer", "train", "-w", str(ws.root), "--out", str(tokenizer), "--vocab-size", "300")
    _dpop(
        "model",
        "tiny",
        "-t",
        str(tokenizer),
        "-o",
        str(model),
        "--layers",
        "1",
        "--hidden",
        "32",
        "--heads",
        "2",
    )

    built, kept = _build(ws, config, model)
    _check_pairs(ws, built, kept)
    refs = (
        _dpop("refs", "-w", str(ws.root), "--dataset", built, "--model", str(model)).strip().splitlines()[-1]
    )
    _check_pairs(ws, built, kept)
    run_id = (
        _dpop(
            "train",
            "-w",
            str(ws.root),
            "--dataset",
            refs,
            "--model",
            str(model),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
        )
        .strip()
        .splitlines()[-1]
    )
    _check_pairs(ws, built, kept)
    assert query(ws, "SELECT dataset_id FROM datasets WHERE is_current").item() == refs
    assert query(ws, "SELECT count(*) FROM pairs_history").item() == kept  # the refs copy is not counted

    # an SFT warm-up of the model (its sft.json is a record the rebuild reads; no extra parents: those
    # were never written to disk by the older SFT record)
    from dpop.sft import SFTConfig, examples_from_shards, warm_up

    sft = warm_up(ws, model, examples_from_shards(ws, built, "train"), SFTConfig(steps=1, batch_size=4))
    assert query(ws, f"SELECT count(*) FROM models WHERE model_id = '{sft.model_id}'").item() == 1

    third = _source(data / "third.jsonl", 3, 12)
    _dpop("ingest", str(third), "-w", str(ws.root))
    refreshed, kept_now = _build(ws, config, model)
    _check_pairs(ws, refreshed, kept_now)
    assert query(ws, "SELECT count(*) FROM pairs_history").item() == kept + kept_now
    ingest_rejections = query(ws, "SELECT count(*) FROM rejections WHERE stage = 'ingest'").item()
    assert ingest_rejections == 3  # one malformed line per file, each file counted once

    # the catalog damaged, then rebuilt from the files: every view and the model's lineage as before
    before = views_snapshot(ws)
    lineage_before = json.loads(_dpop("lineage", f"model-{run_id}", "-w", str(ws.root), "--format", "json"))
    assert len(lineage_before["source_files"]) == 2
    ws.catalog_path.write_bytes(ws.catalog_path.read_bytes()[:50_000])
    damaged = runner.invoke(app, ["lineage", f"model-{run_id}", "-w", str(ws.root)])
    assert damaged.exit_code == 1 and "dpop catalog rebuild" in damaged.output
    _dpop("catalog", "rebuild", "-w", str(ws.root))
    assert views_snapshot(ws) == before
    lineage_after = json.loads(_dpop("lineage", f"model-{run_id}", "-w", str(ws.root), "--format", "json"))
    assert lineage_after == lineage_before
