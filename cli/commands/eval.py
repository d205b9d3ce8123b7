"""`dpop eval`: a model against its reference on a dataset's eval split (`dpop.evaluate`), as a table
overall, per edit-ratio quartile and per source; with `--generate` or `--eval-file`, greedy generation
and exact match of the final answer on verifiable prompts (`dpop.generate`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console

# (metric, column title, format) of the printed table
COLUMNS = (
    ("rewards/accuracies", "reward acc", "{:.2f}"),
    ("rewards/margins", "margin", "{:+.3f}"),
    ("logps/chosen_delta", "Δ logp chosen", "{:+.2f}"),
    ("logps/rejected_delta", "Δ logp rejected", "{:+.2f}"),
    ("logps/chosen_pre_edit_delta", "Δ/token before edit", "{:+.3f}"),
    ("logps/chosen_post_edit_delta", "Δ/token after edit", "{:+.3f}"),
    ("dpop/penalty_active", "chosen below ref", "{:.2f}"),
)


# Long only for its typer option declarations (one per flag, with its help); the body is short.
def eval_command(
    workspace: WorkspaceOption = None,
    model: Annotated[
        Path,
        typer.Option(
            "--model", "-m", help="The model to evaluate (a folder: a run's model/, any checkpoint)."
        ),
    ] = ...,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Dataset version id whose split is evaluated.")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            "-r",
            help="Reference model (default: the one MODEL was trained against, else the one the dataset "
            "stores log-probs of).",
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="The split to evaluate.")] = "eval",
    beta: Annotated[
        float | None, typer.Option("--beta", help="β of the implicit reward (default: the run's, else 0.1).")
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option("--dtype", help="float32 | bfloat16 | float16 (default: the run's training precision)."),
    ] = None,
    autocast: Annotated[
        str | None, typer.Option("--autocast", help="none | bfloat16 | float16 (default: the run's).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Pairs per forward pass (default 64).")
    ] = None,
    generate: Annotated[
        bool, typer.Option("--generate", help="Generation eval of the split's prompts (answers from chosen).")
    ] = False,
    eval_file: Annotated[
        Path | None,
        typer.Option(
            "--eval-file",
            help="Generation eval of a question/answer file (GSM8K test.jsonl; a pairs file: its chosen "
            "answers are the references).",
        ),
    ] = None,
    answer_pattern: Annotated[
        str | None,
        typer.Option("--answer-pattern", help="Final-answer regex (default: '#### N', 'The answer is N')."),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="Token budget per answer.")
    ] = 256,
    max_prompts: Annotated[
        int, typer.Option("--max-prompts", min=1, help="Prompts evaluated (content order).")
    ] = 200,
    train_dataset: Annotated[
        str | None,
        typer.Option("--train-dataset", help="Check the eval set against this dataset's training split."),
    ] = None,
) -> None:
    """Log-probs of MODEL and its reference on every pair of the split; print reward accuracy, margin,
    the change of log p(chosen) and of each chosen token before and after the first edit, overall, per
    edit-ratio quartile and per source; the eval id last (files: <workspace>/evals/<eval id>/).
    With --generate / --eval-file: greedy answers, exact match of the final answer, per source."""
    with clean_errors():
        from cli.commands._workspace import writable_workspace
        from dpop.evaluate import evaluate, read_metrics

        ws = writable_workspace(workspace)
        run = _training_run(model)
        if generate or eval_file is not None:
            options = GenerationOptions(
                answer_pattern, max_new_tokens, max_prompts, batch_size, dtype, autocast
            )
            _generation(ws, model, run, dataset, split, eval_file, train_dataset, options)
            return
        if dataset is None:
            raise ValueError("--dataset is required (or --eval-file / --generate for a generation eval)")
        reference_path = reference or _default_reference(ws, run, dataset, model)
        record = evaluate(
            ws,
            model,
            reference_path,
            dataset,
            split,
            _beta(beta, run),
            _precision(dtype, autocast, run),
            batch_size,
            train_dataset_id=train_dataset,
        )
        _print_table(record, read_metrics(ws, record).to_pylist())
        _print_overlap(record)
        console.print(record.id, highlight=False, markup=False)


@dataclass(frozen=True)
class GenerationOptions:
    answer_pattern: str | None
    max_new_tokens: int
    max_prompts: int
    batch_size: int | None
    dtype: str | None
    autocast: str | None


def _generation(
    ws: Any,
    model: Path,
    run: Any,
    dataset: str | None,
    split: str,
    eval_file: Path | None,
    train_dataset: str | None,
    options: GenerationOptions,
) -> None:
    """Greedy answers of MODEL to the prompts of `eval_file` (else of the dataset's split), scored."""
    from dpop.generate import evaluate_generation, read_generations
    from dpop.model_io import require_model_dir
    from pipeline.evalset import DEFAULT_ANSWER_PATTERN, from_dataset, from_file

    require_model_dir(model)
    pattern = options.answer_pattern or DEFAULT_ANSWER_PATTERN
    if eval_file is not None:
        prompts = from_file(eval_file, pattern, options.max_prompts)
    elif dataset is not None:
        prompts = from_dataset(ws.dataset_dir(dataset), dataset, split, pattern, options.max_prompts)
    else:
        raise ValueError("--generate needs --dataset (its split's prompts) or --eval-file")
    trained_on = train_dataset or _trained_on(run) or dataset
    settings = {
        "answer_pattern": pattern,
        "max_new_tokens": options.max_new_tokens,
        "precision": _precision(options.dtype, options.autocast, run),
        "train_dataset_id": trained_on,
    }
    if options.batch_size:
        settings["batch_size"] = options.batch_size
    record = evaluate_generation(ws, model, prompts, **settings)
    _print_generation(record, read_generations(ws, record).to_pylist())
    _print_overlap(record)
    console.print(record.id, highlight=False, markup=False)


def _trained_on(run: Any) -> str | None:
    found = [i.artifact.id for i in (run.inputs if run else ()) if i.relation == "trained_on"]
    return found[0] if found else None


def _print_generation(record: Any, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    summary = record.summary
    heading = (
        f"{summary['model']} on {summary['eval_set']} ({len(rows)} prompts, "
        f"{summary.get('unverifiable', 0)} without a verifiable answer left out), "
        f"{summary['max_new_tokens']} new tokens, {summary['dtype']}" + (" (reused)" if record.reused else "")
    )
    table = Table(title=heading)
    for name in ("metric", "value"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for metric, value in (summary.get("metrics") or {}).items():
        table.add_row(metric, "" if value is None else f"{value:.3f}")
    console.print(table)
    wrong = [r for r in rows if not r["correct"]][:3]
    for row in wrong:
        console.print(
            f"  wrong: {row['prompt'][:80]!r} -> {row['extracted_answer']!r} (reference {row['reference_answer']!r})",
            highlight=False,
            markup=False,
        )


def _print_overlap(record: Any) -> None:
    from pipeline.evalset import Overlap

    found = record.summary.get("overlap") or {}
    overlap = Overlap(
        found.get("train_dataset_id"), int(found.get("pairs") or 0), int(found.get("prompts") or 0)
    )
    message = overlap.message()
    if message:
        console.print(f"[bold yellow]warning: {message}[/]", soft_wrap=True)
    else:
        console.print(
            f"checked against the training split of {overlap.train_dataset_id}: no overlap", highlight=False
        )


def _training_run(model: Path) -> Any:
    """The record of the training run that made `model` (a run's model/ folder), else None."""
    from dpop.model_io import model_artifact
    from pipeline.stage import read_record

    if model_artifact(model).meta.get("made_by") != "train":
        return None
    return read_record(model.expanduser().resolve().parent)


def _default_reference(ws: Any, run: Any, dataset: str, model: Path) -> Path:
    """The reference MODEL was trained against, else the model whose log-probs the dataset stores."""
    from pipeline.shards import load_manifest

    candidates = [i.artifact.path for i in (run.inputs if run else ()) if i.relation == "reference_model"]
    candidates.append((load_manifest(ws, dataset).get("reference_model") or {}).get("path"))
    for path in candidates:
        if path and Path(path).is_dir():
            return Path(path)
    raise ValueError(
        f"no reference for {model}: it is not a training run's model and dataset {dataset} stores no "
        "reference log-probs; give one with --reference"
    )


def _beta(beta: float | None, run: Any) -> float:
    if beta is not None:
        return beta
    return float((run.config if run else {}).get("beta", 0.1))


def _precision(dtype: str | None, autocast: str | None, run: Any) -> Any:
    from dpop.model_io import Precision, precision_for_training

    trained = precision_for_training(run.config) if run else Precision()
    return Precision(
        dtype or trained.weights,
        trained.autocast if autocast is None else (None if autocast == "none" else autocast),
    )


def _print_table(record: Any, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    summary = record.summary
    heading = (
        f"{summary['model']} vs {summary['reference']} on {summary['dataset_id']} ({summary['split']}), "
        f"β {summary['beta']:g}, {summary['dtype']}" + (" (reused)" if record.reused else "")
    )
    table = Table(title=heading)
    for name in ("group", "pairs", *(column for _, column, _ in COLUMNS)):
        table.add_column(name, justify="left" if name == "group" else "right")
    values = {(r["group_kind"], r["group"], r["metric"]): r for r in rows}
    groups = list(dict.fromkeys((r["group_kind"], r["group"]) for r in rows))
    sources = [g for g in groups if g[0] == "source"]
    for kind, group in groups:
        if kind == "source" and len(sources) < 2:  # one source is the overall row again
            continue
        label = group if kind != "source" else f"source {group}"
        pairs = values[(kind, group, "rewards/accuracies")]["n"]
        cells = [_cell(values.get((kind, group, metric)), spec) for metric, _, spec in COLUMNS]
        table.add_row(label, str(pairs), *cells)
    console.print(table)


def _cell(row: dict[str, Any] | None, spec: str) -> str:
    return "" if row is None or row["value"] is None else spec.format(row["value"])


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
