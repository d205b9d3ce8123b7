"""`dpop build`: ingested pairs to a curated, tokenised dataset version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console

HISTOGRAM_BINS = 10
BAR_WIDTH = 40


def build(
    workspace: WorkspaceOption = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Curation config YAML (see examples/curate.yaml); default: built-in."
        ),
    ] = None,
    tokenizer: Annotated[
        Path,
        typer.Option("--tokenizer", "-t", help="Local tokenizer folder (AutoTokenizer.from_pretrained)."),
    ] = ...,
    batch_rows: Annotated[int, typer.Option("--batch-rows", help="Pairs per streamed batch.")] = 8192,
) -> None:
    """Score, curate, split, tokenise and shard the latest ingests; print the funnel and the dataset id."""
    with clean_errors():
        from cli.commands._workspace import writable_workspace
        from pipeline.build import build_dataset

        ws = writable_workspace(workspace)
        with console.status("building dataset…"):
            result = build_dataset(ws, config, tokenizer, batch_rows=batch_rows)
        print_funnel(result)
        print_edit_ratio_histogram(result.dataset_dir / "pairs.parquet")
        state = "reused existing version" if result.reused else "built"
        console.print(
            f"{state}: {result.rows_kept:,} pairs kept of {result.rows_in:,} "
            f"(train {result.train_rows:,}, eval {result.eval_rows:,}) in {result.dataset_dir}"
        )
        # the id alone on the last line, so scripts can take it with `tail -1`
        console.print(result.dataset_id, highlight=False, markup=False)


def print_funnel(result) -> None:
    from rich.table import Table

    table = Table(title=f"Funnel of {result.dataset_id}")
    table.add_column("step")
    table.add_column("reason code")
    table.add_column("rows in", justify="right")
    table.add_column("dropped", justify="right")
    table.add_column("rows out", justify="right")
    for step, rows_in, dropped, reason in result.funnel:
        style = "red" if dropped else None
        table.add_row(step, reason, f"{rows_in:,}", f"{dropped:,}", f"{rows_in - dropped:,}", style=style)
    table.add_section()
    table.add_row(
        "kept", "", f"{result.rows_in:,}", f"{result.rows_in - result.rows_kept:,}", f"{result.rows_kept:,}"
    )
    table.add_row("  train", "", "", "", f"{result.train_rows:,}")
    table.add_row("  eval", "", "", "", f"{result.eval_rows:,}")
    console.print(table)


def histogram_lines(counts: list[int], width: int = BAR_WIDTH) -> list[str]:
    """Text histogram over [0, 1] from per-bin counts: one line per bin, `[lo, hi) count bar`."""
    bins = len(counts)
    peak = max(counts) or 1
    lines = []
    for index, count in enumerate(counts):
        low, high = index / bins, (index + 1) / bins
        closing = "]" if index == bins - 1 else ")"
        lines.append(f"[{low:.1f}, {high:.1f}{closing} {count:>9,} {'█' * round(width * count / peak)}")
    return lines


def print_edit_ratio_histogram(pairs_path: Path, bins: int = HISTOGRAM_BINS) -> None:
    import polars as pl

    counts = (
        pl.scan_parquet(pairs_path)
        .select((pl.col("edit_ratio") * bins).floor().cast(pl.Int64).clip(0, bins - 1).alias("bin"))
        .group_by("bin")
        .len()
        .collect()
    )
    per_bin = [0] * bins
    for index, count in counts.iter_rows():
        per_bin[index] = count
    console.print(f"[bold]edit ratio of kept pairs[/] ({sum(per_bin):,} pairs)")
    for line in histogram_lines(per_bin):
        console.print(line, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("build")(build)
