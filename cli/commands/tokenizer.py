"""`dpop tokenizer train`: the demo's tiny byte-level BPE tokenizer (demo/tiny_tokenizer.py), trained on
the workspace's latest ingests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console


def train_tokenizer(
    workspace: WorkspaceOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the tokenizer to.")] = ...,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="BPE vocabulary size (>= 261).")] = 512,
    max_texts: Annotated[
        int, typer.Option("--max-texts", help="Use at most this many texts (first ones, in source order).")
    ] = 50_000,
) -> None:
    """Train the tiny byte-level BPE tokenizer (with a chat template) on the ingested pairs."""
    with clean_errors():
        from cli.commands._workspace import writable_workspace
        from demo.tiny_tokenizer import tokenizer_texts_from_pairs, train_tiny_tokenizer
        from pipeline.ingest import latest_ingests

        ws = writable_workspace(workspace)
        ingests = latest_ingests(ws)
        if not ingests:
            raise ValueError(f"no ingested pairs in workspace {ws.root}: run `dpop ingest` first")
        texts = tokenizer_texts_from_pairs([item.pairs_path for item in ingests], max_texts)
        path = train_tiny_tokenizer(texts, out, vocab_size=vocab_size)
        console.print(f"tokenizer trained on {len(texts):,} texts (vocabulary {vocab_size}) -> {path}")


def register(app: typer.Typer) -> None:
    tokenizer_app = typer.Typer(help="Tokenizers for tests and the offline demo.", no_args_is_help=True)
    tokenizer_app.command("train")(train_tokenizer)
    app.add_typer(tokenizer_app, name="tokenizer")
