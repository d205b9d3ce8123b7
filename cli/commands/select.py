"""`dpop select`: a new dataset version holding the pairs a rule selects (by implicit reward margin,
reference difficulty, edit ratio, a SQL score …), with per-pair weights and per-source mixing; every
other pair goes to the rejections as `not_selected` (see docs/selection.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console
from cli.commands.logps import AutocastOption, DatasetOption, DtypeOption


# Long only for its typer option declarations (one per flag, with its help); the body is short.
def select(
    workspace: WorkspaceOption = None,
    dataset: DatasetOption = ...,
    rule: Annotated[
        str | None,
        typer.Option(
            "--rule",
            "-r",
            help="margin | reference_difficulty | small_gap | low_edit | edit_quota | sql | random.",
        ),
    ] = None,
    keep: Annotated[
        float | None, typer.Option("--keep", help="Share of the train pairs to keep (0-1].")
    ] = None,
    keep_n: Annotated[int | None, typer.Option("--keep-n", help="Number of train pairs to keep.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Selection config YAML (flags override its keys).")
    ] = None,
    probe: Annotated[
        Path | None,
        typer.Option("--probe", help="Probe model folder (e.g. a short DPO run): the policy side."),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="Reference model folder (default: the log-probs the shards hold)."),
    ] = None,
    score: Annotated[str | None, typer.Option("--score", help="The sql rule: a DuckDB expression.")] = None,
    ascending: Annotated[
        bool | None, typer.Option("--ascending/--descending", help="The sql rule's order.")
    ] = None,
    band: Annotated[
        str | None,
        typer.Option("--band", help="MIN,MAX: scores a kept pair may have (one side may be empty)."),
    ] = None,
    beta: Annotated[
        float | None, typer.Option("--beta", help="β of the implicit reward (default 0.1).")
    ] = None,
    mix: Annotated[str | None, typer.Option("--mix", help="Shares per source: hh=0.5,gsm8k=0.5.")] = None,
    quotas: Annotated[
        str | None, typer.Option("--quotas", help="Pairs per source: hh=1000,gsm8k=500.")
    ] = None,
    weight: Annotated[
        str | None,
        typer.Option("--weight", help="Per-pair weight: a DuckDB expression (may use score, rank)."),
    ] = None,
    source_weights: Annotated[
        str | None, typer.Option("--source-weights", help="Weight per source: hh=2,gsm8k=1.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of the random and edit_quota samples.")
    ] = None,
    select_eval: Annotated[
        bool | None, typer.Option("--select-eval/--keep-eval", help="Select among eval pairs too.")
    ] = None,
    dtype: DtypeOption = "float32",
    autocast: AutocastOption = "none",
) -> None:
    """Score every pair with a rule, keep the best (--keep / --keep-n, per-source --mix or --quotas), write
    them as a new dataset version; print what was kept and dropped and, on the last line, its id."""
    with clean_errors():
        from cli.commands._workspace import writable_workspace
        from pipeline.select import load_selection_config, select_dataset

        ws = writable_workspace(workspace)
        band_min, band_max = _band(band)
        flags = {
            "rule": rule, "keep": keep, "keep_n": keep_n, "score": score, "ascending": ascending,
            "band_min": band_min, "band_max": band_max, "beta": beta, "mix": _pairs(mix, "--mix", float),
            "quotas": _pairs(quotas, "--quotas", int), "weight": weight,
            "source_weights": _pairs(source_weights, "--source-weights", float), "seed": seed,
            "select_eval": select_eval,
        }  # fmt: skip
        selection = load_selection_config(config, **flags)
        scores = _model_scores(ws, dataset, probe, reference, dtype, autocast)
        with console.status(f"selecting from {dataset} by {selection.rule}…"):
            record = select_dataset(ws, dataset, selection, scores)
        print_selection(record)
        console.print(record.id, highlight=False, markup=False)


def _model_scores(
    ws: Any, dataset: str, probe: Path | None, reference: Path | None, dtype: str, autocast: str
) -> list:
    """The log-prob tables of the models given (computed, or reused, first)."""
    if probe is None and reference is None:
        return []
    from dpop.model_io import Precision
    from dpop.model_logps import compute_model_logps
    from pipeline.select import ModelScores

    precision = Precision(dtype, None if autocast == "none" else autocast)
    scores = []
    for role, model in (("probe", probe), ("reference", reference)):
        if model is not None:
            with console.status(f"log-probs of the {role} model…"):
                record = compute_model_logps(ws, dataset, model, precision, progress=False)
            scores.append(ModelScores.from_record(ws, role, record))
    return scores


def _band(text: str | None) -> tuple[float | None, float | None]:
    if text is None:
        return None, None
    low, sep, high = text.partition(",")
    try:
        if not sep:
            raise ValueError
        return (float(low) if low.strip() else None, float(high) if high.strip() else None)
    except ValueError:
        raise ValueError(f"--band: expected MIN,MAX (either side may be empty), got {text!r}") from None


def _pairs(text: str | None, flag: str, kind: type) -> dict[str, Any] | None:
    if text is None:
        return None
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            result[name.strip()] = kind(value)
        except ValueError:
            raise ValueError(
                f"{flag}: expected name=value,name=value ({kind.__name__} values), got {item!r}"
            ) from None
    return result


def print_selection(record: Any) -> None:
    from rich.table import Table

    summary = record.summary["selection"]
    state = "reused existing version" if record.reused else "selected"
    console.print(
        f"{state}: rule {summary['rule']}, {summary['kept_selectable']:,} of {summary['selectable']:,} "
        f"selectable pairs kept ({summary['candidates']:,} candidates), {summary['not_selected']:,} not selected"
    )
    table = Table(title="kept vs dropped, by source")
    for column in ("source", "kept", "dropped"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for source, counts in summary["by_source"].items():
        table.add_row(source, f"{counts['kept']:,}", f"{counts['dropped']:,}")
    console.print(table)
    scores = Table(title="score")
    for column in ("", "count", "min", "p25", "median", "p75", "max"):
        scores.add_column(column, justify="right")
    for name in ("kept", "dropped"):
        q = summary["score"][name]
        scores.add_row(
            name,
            str(q.get("count", 0)),
            *(f"{q[k]:.4g}" if k in q else "" for k in ("min", "p25", "median", "p75", "max")),
        )
    console.print(scores)
    for key in ("reference_ranking_accuracy", "probe_reward_accuracy"):
        if key in summary:
            shown = ", ".join(f"{split} {value:.3f}" for split, value in summary[key].items())
            console.print(f"{key.replace('_', ' ')}: {shown}")


def register(app: typer.Typer) -> None:
    app.command("select")(select)
