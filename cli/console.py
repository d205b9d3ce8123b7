"""The console of `dpop run`: one line per stage, a live progress display, warnings once, a summary.

- `quiet_libraries(verbose)`: without `-v`, the libraries keep their chatter off the terminal: Prefect's
  *console* handler at CRITICAL (a failed stage is dpop's one error line; its loggers keep their level,
  so the runs' logs, tracebacks included, still reach the Prefect API and UI, `log_prints` too),
  transformers/datasets/huggingface_hub at ERROR with their progress
  bars off, tqdm off (the Trainer's bar: `dpop.train` then drops its printed metric dicts too), Dask's
  logs at ERROR (its `CommClosedError` tracebacks when a cluster closes). Set as environment variables
  first (read when a library is imported, and inherited by Dask workers), and on the handlers and
  loggers of libraries this process has already imported; everything is put back on exit. `-v` changes
  nothing.
- `WarningLog`: Python warnings shown once each, as one line, as they happen (above the progress
  display); deprecations and known library noise we cannot act on hidden unless `-v`.
- `StageDisplay`: the runner's `progress_sink` and `stage_observer` (`pipeline.stage`): a bar per
  running stage (what, how many rows/pairs/steps, how fast, ETA, the latest loss), a spinner for a stage
  that runs in another process (Dask: no progress reaches us), and a line when a stage finishes, is
  reused or fails. Context variables reach Prefect's task threads; with `-v` only the lines are printed
  (the libraries' own bars would fight a live display).
- `print_summary`: the final table.

Nothing here imports Prefect, torch or transformers unless the caller already did: an up-to-date
`dpop run` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

# --- libraries' chatter -------------------------------------------------------------------------------

QUIET_ENV = {
    # Prefect: only the console handler; the loggers (and so the API handler, the UI's logs) keep INFO
    # at CRITICAL: a failed task or flow is reported by dpop in one line (its traceback with -v, and in the UI)
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_DATASETS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" too
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",  # every other tqdm bar (tqdm reads TQDM_<argument> defaults)
    "DASK_LOGGING__DISTRIBUTED": "error",  # in Dask's workers and scheduler too (they inherit it)
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",  # worker processes' warnings
}
QUIET_LOGGERS = ("accelerate", "peft", "datasets", "distributed", "torch.distributed", "prefect_dask")


@contextlib.contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Libraries off the console unless `verbose` (see the module docstring); restored on exit. A
    variable the user set keeps the user's value."""
    if verbose:
        yield
        return
    saved_env = {key: os.environ.get(key) for key in QUIET_ENV}
    os.environ.update({key: value for key, value in QUIET_ENV.items() if saved_env[key] is None})
    with contextlib.ExitStack() as stack:
        for name in QUIET_LOGGERS:
            stack.enter_context(_level(logging.getLogger(name), logging.ERROR))
        for handler in _prefect_console_handlers():
            stack.enter_context(_level(handler, logging.CRITICAL))
        stack.enter_context(_transformers_quiet())
        try:
            yield
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextlib.contextmanager
def _level(target: logging.Logger | logging.Handler, level: int) -> Iterator[None]:
    before = target.level
    target.setLevel(max(before, level))
    try:
        yield
    finally:
        target.setLevel(before)


def _prefect_console_handlers() -> list[logging.Handler]:
    """Prefect's console handlers where Prefect has set up logging in this process already (a test, a
    notebook); otherwise the environment variable configures them when Prefect starts."""
    if "prefect.logging.handlers" not in sys.modules:
        return []
    console_handler = sys.modules["prefect.logging.handlers"].PrefectConsoleHandler
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    return [h for lg in loggers for h in getattr(lg, "handlers", []) if isinstance(h, console_handler)]


@contextlib.contextmanager
def _transformers_quiet() -> Iterator[None]:
    """transformers already imported (the variables are read at import): its verbosity and bars now."""
    if "transformers.utils.logging" not in sys.modules:
        yield
        return
    hf_logging = sys.modules["transformers.utils.logging"]
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# --- warnings -------------------------------------------------------------------------------------------

# Library warnings we cannot act on, hidden unless -v (deprecations are hidden by category).
NOISY = (
    re.compile(r"`torch_dtype` is deprecated|TRANSFORMERS_CACHE|resume_download"),
    re.compile(r"pkg_resources is deprecated|datetime\.datetime\.utcnow"),
    re.compile(r"The given NumPy array is not writable"),
    re.compile(r"To copy construct from a tensor"),
    re.compile(r"Using a slow image processor|use_fast"),
)
HIDDEN_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning)
OUR_PACKAGES = ("pipeline", "dpop", "demo", "flows", "cli")


class WarningLog:
    """`warnings.showwarning` for the run: each distinct warning once, as one line
    ("warning: fp16 needs a GPU …"), library noise hidden unless verbose (see the module docstring)."""

    def __init__(self, console: Console, verbose: bool = False):
        self.console, self.verbose = console, verbose
        self.seen: set[tuple[str, str]] = set()
        self.shown: list[str] = []
        self.hidden = 0
        self._lock = threading.Lock()

    def showwarning(
        self,
        message: Any,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: Any = None,
    ) -> None:
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        with self._lock:
            if (category.__name__, text) in self.seen:
                return
            self.seen.add((category.__name__, text))
            if self.is_noise(text, category, filename) and not self.verbose:
                self.hidden += 1
                return
            self.shown.append(text)
        origin = _package_of(filename)
        where = "" if origin in OUR_PACKAGES or not origin else f" [dim]({escape(origin)})[/]"
        self.console.print(f"[yellow]warning:[/] {escape(text)}{where}", highlight=False, soft_wrap=True)

    @staticmethod
    def is_noise(text: str, category: type[Warning], filename: str) -> bool:
        if _package_of(filename) in OUR_PACKAGES:
            return False
        return issubclass(category, HIDDEN_CATEGORIES) or any(p.search(text) for p in NOISY)

    @contextlib.contextmanager
    def installed(self) -> Iterator[WarningLog]:
        """Collect the warnings of this block (every warning reaches us once: the filters would
        otherwise show a warning again from each new line of code)."""
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = self.showwarning
            yield self


def _package_of(filename: str) -> str:
    """The top-level package a warning came from ("transformers", "dpop"), or "" when unknown."""
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
        return rest[0].removesuffix(".py") if rest else ""
    for package in OUR_PACKAGES:
        if package in parts:
            return package
    return ""


# --- the stages -----------------------------------------------------------------------------------------

UNITS = {
    "ingest": "rows",
    "logps": "pairs",
    "model_logps": "pairs",
    "eval": "pairs",
    "sft": "steps",
    "train": "steps",
    "generation_eval": "batches",
}
LABEL_WIDTH = 46


class _Count(ProgressColumn):
    """ "45/120 pairs · 38.2 pairs/s · ETA 0:02" (what is known of it)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit") or ""
        if not task.fields.get("reporting"):
            return Text("")
        done = f"{task.completed:,.0f}" + (f"/{task.total:,.0f}" if task.total is not None else "")
        parts = [f"{done} {unit}".strip()]
        speed = task.speed
        if speed and unit:
            parts.append(f"{speed:,.1f} {unit}/s" if speed >= 1 else f"{1 / speed:,.1f} s/{unit.rstrip('s')}")
        remaining = task.time_remaining
        if remaining is not None and task.total is not None and not task.finished:
            parts.append(f"ETA {_clock(remaining)}")
        return Text(" · ".join(parts), style="progress.download")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class StageDisplay:
    """What the runner tells about stages, on the console (see the module docstring)."""

    def __init__(self, console: Console, live: bool = True):
        self.console, self.live = console, live
        self.bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", style="bold"),
            BarColumn(bar_width=24),
            _Count(),
            TextColumn("{task.fields[note]}", style="cyan"),
            console=console,
            transient=True,
            disable=not live,
        )
        self._tasks: dict[str, Any] = {}
        self._started: dict[str, float] = {}
        self._units: dict[str, str] = {}
        self._done: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def active(self) -> Iterator[StageDisplay]:
        """Show the stages run in this block (and in the task threads it starts)."""
        from pipeline.stage import progress_sink, stage_observer

        with self.bars:
            sink, observer = progress_sink.set(self.progress), stage_observer.set(self.event)
            try:
                yield self
            finally:
                stage_observer.reset(observer)
                progress_sink.reset(sink)

    def event(self, event: str, stage: Any, record: Any = None) -> None:
        label = stage.label()
        if event == "start":
            with self._lock:
                self._units[label] = UNITS.get(stage.name, "")
                self._started.setdefault(label, time.perf_counter())
                self._task(label)
            if not self.live:  # no bars: say what runs now (the libraries' output follows)
                self.console.print(f"[dim]→ {escape(label)}[/]", highlight=False)
        elif event == "reused":
            self._line("[dim]↺[/]", label, f"[dim]reused {escape(record.id) if record else ''}[/]", None)
        else:
            with self._lock:
                task = self._tasks.pop(label, None)
                started = self._started.pop(label, None)
                self._done.pop(label, None)
            if task is not None:
                self.bars.remove_task(task)
            seconds = time.perf_counter() - started if started is not None else None
            if event == "done":
                self._line("[green]✓[/]", label, escape(outcome(stage.name, record)), seconds)
            else:
                self._line("[red]✗[/]", label, "[red]failed[/]", seconds)

    def progress(self, label: str, done: int, total: int | None, text: str) -> None:
        with self._lock:
            task = self._task(label)
            if done < self._done.get(label, 0):
                self.bars.reset(task, total=total)  # a new pass (the next split, the reference model)
            self._done[label] = done
        self.bars.update(task, completed=done, total=total, note=escape(text), reporting=True)

    def _task(self, label: str) -> Any:
        """The label's bar (made on first use); the caller holds the lock."""
        if label not in self._tasks:
            self._started.setdefault(label, time.perf_counter())
            description = escape(_fit(label, LABEL_WIDTH))
            unit = self._units.get(label, "")
            self._tasks[label] = self.bars.add_task(
                description, total=None, note="", unit=unit, reporting=False
            )
        return self._tasks[label]

    def _line(self, mark: str, label: str, what: str, seconds: float | None) -> None:
        line = Table.grid(padding=(0, 1), expand=True)
        line.add_column(width=1)
        line.add_column(width=LABEL_WIDTH, no_wrap=True, overflow="ellipsis")
        line.add_column(ratio=1, overflow="fold")
        line.add_column(justify="right", width=8)
        line.add_row(mark, escape(label), what, f"[dim]{seconds:.1f} s[/]" if seconds is not None else "")
        self.console.print(line)


def _fit(label: str, width: int) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def outcome(stage: str, record: Any) -> str:
    """A stage's result in a few words, from its record."""
    counts: Mapping[str, Any] = record.counts if record else {}
    summary: Mapping[str, Any] = record.summary if record else {}
    text = _OUTCOMES.get(stage, _counts)(counts, summary)
    return text or ", ".join(f"{value:,} {key}" for key, value in counts.items() if isinstance(value, int))


def _counts(counts: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    return ""


def _ingest(counts: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    rejected = counts.get("rows_rejected") or 0
    text = f"{counts.get('rows_read', 0):,} rows → {counts.get('pairs_written', 0):,} pairs"
    return text + (f", {rejected:,} rejected" if rejected else "") + f" ({summary.get('format', '?')})"


def _build(counts: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    return (
        f"{counts.get('rows_in', 0):,} pairs → {counts.get('rows_out', 0):,} kept "
        f"({counts.get('train_rows', 0):,} train, {counts.get('eval_rows', 0):,} eval)"
    )


def _logps(counts: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    return f"{counts.get('rows_out', 0):,} pairs ({counts.get('computed', 0):,} computed, {counts.get('cached', 0):,} cached)"


def _sft(counts: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    loss = summary.get("final_loss")
    return f"{counts.get('steps', 0)} steps" + (f", loss {loss:.4g}" if isinstance(loss, float) else "")


def _train(counts: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    metrics = summary.get("final_metrics") or {}
    loss = metrics.get("train_loss", metrics.get("loss"))
    text = f"{counts.get('steps', 0)} steps" + (f", train loss {loss:.4g}" if isinstance(loss, float) else "")
    return text + (" (resumed)" if summary.get("resumed") else "")


def _eval(counts: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    accuracy = (summary.get("metrics") or {}).get("rewards/accuracies")
    found = f", reward accuracy {accuracy:.2f}" if isinstance(accuracy, float) else ""
    return f"{counts.get('pairs', 0):,} pairs{found}"


def _generation(counts: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    match = (summary.get("metrics") or {}).get("exact_match")
    found = f", exact match {match:.2f}" if isinstance(match, float) else ""
    return f"{counts.get('prompts', 0):,} prompts{found}"


def _tiny(counts: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    return f"{counts.get('parameters', 0):,} parameters"


_OUTCOMES = {
    "ingest": _ingest,
    "build": _build,
    "logps": _logps,
    "model_logps": _logps,
    "sft": _sft,
    "train": _train,
    "eval": _eval,
    "generation_eval": _generation,
    "tiny_model": _tiny,
}


# --- the summary ----------------------------------------------------------------------------------------

RUN_COLUMNS = (
    ("reward acc.", "rewards/accuracies", "{:.2f}"),
    ("margin", "rewards/margins", "{:.3g}"),
    ("Δ log p(chosen)", "logps/chosen_delta", "{:+.3g}"),
    ("exact match", "exact_match", "{:.2f}"),
)


def print_summary(console: Console, summary: dict[str, Any], seconds: float) -> None:
    """The run in one table: where things are, each run's loss and key eval metrics, the gate, and the
    commands to look further (lineage, SQL)."""
    console.print(
        f"[bold]dpop run done in {seconds:.0f} s[/] ({escape(summary['via'])})",
        highlight=False,
        soft_wrap=True,
    )
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column("what", no_wrap=True, style="bold", min_width=16)  # both tables align
    table.add_column("value", overflow="fold")
    for what, value in _places(summary):
        table.add_row(what, value)
    console.print(table)
    console.print(_runs_table(summary))
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column("what", no_wrap=True, style="bold", min_width=16)  # both tables align
    table.add_column("value", overflow="fold")
    for what, value in _next_steps(summary):
        table.add_row(what, value)
    console.print(table)


def _places(summary: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("workspace", escape(summary["workspace"])),
        ("dataset", f"{summary['dataset_id']}  [dim]({_pairs(summary)})[/]"),
        ("reference policy", escape(str(summary["reference_model"]))),
    ]
    return rows + ([("comparison", summary["comparison_id"])] if summary.get("comparison_id") else [])


def _pairs(summary: dict[str, Any]) -> str:
    return f"{summary.get('train_rows') or 0:,} train / {summary.get('eval_rows') or 0:,} eval pairs"


def _runs_table(summary: dict[str, Any]) -> Table:
    gate = summary.get("gate") or {}
    by_model = {
        model: {k: v for values in sets.values() for k, v in values.items()}
        for model, sets in (gate.get("metrics") or {}).items()
    }
    table = Table(box=None, header_style="bold", padding=(0, 2, 0, 0))
    for name in ("run", "loss", "train loss", *(c[0] for c in RUN_COLUMNS), ""):
        table.add_column(name, justify="left" if name in ("run", "loss", "") else "right", no_wrap=True)
    for run in summary["runs"]:
        metrics = {
            **_eval_from_training(run),
            **(run.get("eval_metrics") or {}),
            **by_model.get(run["model_id"], {}),
        }
        train_loss = (run.get("final_metrics") or {}).get("train_loss")
        cells = [_number(metrics.get(key), form) for _, key, form in RUN_COLUMNS]
        mark = (
            "[bold green]★ " + gate["alias"] + "[/]" if gate.get("champion_after") == run["model_id"] else ""
        )
        table.add_row(run["run_id"], run["loss"], _number(train_loss, "{:.4g}"), *cells, mark)
    return table


def _eval_from_training(run: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's last evaluation (eval_*), when the chain ran no eval stage."""
    final = run.get("final_metrics") or {}
    return {key.removeprefix("eval_"): value for key, value in final.items() if key.startswith("eval_")}


def _number(value: Any, form: str) -> str:
    return form.format(value) if isinstance(value, int | float) else "[dim]–[/]"


def _next_steps(summary: dict[str, Any]) -> list[tuple[str, str]]:
    runs, gate = summary["runs"], summary.get("gate")
    rows = [(f"report ({run['loss']})", escape(run["report"])) for run in runs if run.get("report")]
    if gate:  # a refusal is an outcome, not an error: the champion stays and the reason says why
        rows += [(f"gate ({gate['alias']})", escape(f"{gate['outcome']}: {gate['reason']}"))]
    champion = next((r for r in runs if gate and r["model_id"] == gate.get("champion_after")), None)
    rows += [("champion model" if champion else "model", escape((champion or runs[0])["model_dir"]))]
    ws, run_id = summary["workspace"], summary["run_id"]
    sql = f"SELECT split, metric, value FROM metrics WHERE run_id = '{run_id}'"
    rows += [
        ("lineage", escape(f"dpop lineage {run_id} -w {ws}")),
        ("SQL", escape(f'dpop sql -w {ws} "{sql}"')),
    ]
    if summary.get("smoke_test"):
        rows += [("SMOKE TEST", f"[bold yellow]{escape(summary['smoke_test'])}[/]")]
    return rows
