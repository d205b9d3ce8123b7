"""The pair inspector: pairs as an ML engineer reads them, on one static page beside the report.

For each pair: the prompt, chosen and rejected with their differences highlighted (characters for
close answers, words for far ones) and the first difference marked; edit ratio, lengths, scores,
source file and row; and, for each evaluated run, the chosen answer token by token coloured by the
change of log p against the reference (`chosen_token_delta` of the evaluation, the chosen token ids
of the shards decoded one by one), the first token after the common prefix outlined: the paper's
Fig. 4 view, per pair. Rejections are shown as their raw record (cut to a bound) with stage, reason
and detail.

The page is bounded whatever the dataset's size: it holds the `N_LOWEST` eval pairs of lowest edit
ratio, the `N_DROPS` pairs whose log p(chosen) fell most in any run, and the first `K_PER_REASON`
rejections of each reason (by file and row), each choice deterministic; the page says so. Filtering by
source, reason and edit-ratio range runs in the browser (a few lines of vanilla JS, no network).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from rapidfuzz.distance import Levenshtein

from pipeline.report.data import DatasetData, RunData

N_LOWEST, N_DROPS, K_PER_REASON = 40, 40, 5
RAW_CHARS, TEXT_CHARS, TOKENS_SHOWN = 2_000, 6_000, 1_200
CHAR_DIFF_LIMIT = 3_000  # longer answers, or far apart ones, are diffed word by word
PAIR_TEXT_COLUMNS = (
    "pair_id",
    "prompt",
    "chosen",
    "rejected",
    "chosen_score",
    "rejected_score",
    "source",
    "source_uri",
    "source_row",
    "edit_distance",
    "edit_ratio",
    "len_chosen_chars",
    "len_rejected_chars",
    "split",
)
REJECTION_COLUMNS = ("source_uri", "source_row", "pair_id", "stage", "reason", "detail", "raw")
LOWEST, DROP = "lowest-edit", "largest-drop"


@dataclass
class Sample:
    """What the page shows: pair ids per reason for showing them, rejections, and how they were chosen."""

    lowest: list[str]
    drops: list[str]
    rejections: pl.DataFrame
    rejection_totals: dict[str, int]
    eval_pairs: int
    pool: str  # "eval" or "kept" (no eval split): where the lowest-edit pairs come from
    notes: list[str] = field(default_factory=list)

    @property
    def pair_ids(self) -> list[str]:
        return list(dict.fromkeys([*self.lowest, *self.drops]))


# --- choosing ------------------------------------------------------------------------------------------


def lowest_edit(pairs: pl.LazyFrame, n: int) -> tuple[list[str], int, str]:
    """The `n` eval pairs of lowest edit ratio (ties by pair id); the kept pairs when there is no
    eval split. Returns (ids, pairs in the pool, pool name)."""
    has_split = "split" in pairs.collect_schema().names()
    pool = pairs.filter(pl.col("split") == "eval") if has_split else pairs
    size = pool.select(pl.len()).collect().item()
    name = "eval"
    if size == 0:
        pool, name = pairs, "kept"
        size = pool.select(pl.len()).collect().item()
    chosen = pool.select("pair_id", "edit_ratio").sort(["edit_ratio", "pair_id"], nulls_last=True).head(n)
    return chosen.collect().get_column("pair_id").to_list(), int(size), name


def largest_drops(deltas: Sequence[pl.LazyFrame], n: int) -> list[str]:
    """The `n` pairs whose log p(chosen) fell most below the reference in any run (ties by pair id);
    only pairs that fell."""
    if not deltas:
        return []
    joined = pl.concat([d.select("pair_id", "delta_chosen_logps") for d in deltas])
    worst = (
        joined.group_by("pair_id")
        .agg(pl.col("delta_chosen_logps").min())
        .filter(pl.col("delta_chosen_logps") < 0)
        .sort(["delta_chosen_logps", "pair_id"])
        .head(n)
    )
    return worst.collect().get_column("pair_id").to_list()


def rejection_sample(frames: Sequence[pl.LazyFrame], k: int) -> tuple[pl.DataFrame, dict[str, int]]:
    """The first `k` rejections of each (stage, reason) by (file, row), and the count of each."""
    if not frames:
        return pl.DataFrame(schema={c: pl.String for c in REJECTION_COLUMNS}), {}
    columns = [pl.col(c) if c != "source_row" else pl.col(c).cast(pl.Int64) for c in REJECTION_COLUMNS]
    every = pl.concat([f.select(columns) for f in frames], how="vertical_relaxed")
    totals = every.group_by("stage", "reason").agg(pl.len().alias("n")).collect()
    first = (
        every.sort(["stage", "reason", "source_uri", "source_row"])
        .group_by("stage", "reason", maintain_order=True)
        .head(k)
        .with_columns(pl.col("raw").str.slice(0, RAW_CHARS), pl.col("detail").str.slice(0, RAW_CHARS))
        .collect()
    )
    return first, {f"{s}/{r}": int(n) for s, r, n in totals.iter_rows()}


def _rejection_frames(data: DatasetData, ws_root: Path) -> list[pl.LazyFrame]:
    paths = [ws_root / "sources" / ingest_id / "rejections.parquet" for ingest_id in data.ingest_ids]
    # A derived version (reference log-probs, a selection) carries its parent's rejections (and adds
    # its own): the most derived one that has the file holds them all, once.
    versions = [
        ws_root / "datasets" / d / "rejections.parquet" for d in (data.dataset_id, data.tokenized_id) if d
    ]
    paths += [path for path in versions if path.is_file()][:1]
    frames = []
    for path in dict.fromkeys(paths):
        if path.is_file():
            frame = pl.scan_parquet(path)
            if set(REJECTION_COLUMNS) <= set(frame.collect_schema().names()):
                frames.append(frame)
    return frames


def choose(data: DatasetData, runs: Sequence[RunData], ws_root: Path) -> Sample:
    notes = []
    lowest, size, pool = [], 0, "eval"
    if data.pairs_path is not None:
        lowest, size, pool = lowest_edit(pl.scan_parquet(data.pairs_path), N_LOWEST)
    else:
        notes.append("no pairs.parquet for this dataset: no pairs to show")
    deltas = [r.evaluation.pairs(("pair_id", "delta_chosen_logps")) for r in runs if r.evaluation is not None]
    drops = largest_drops(deltas, N_DROPS)
    rejections, totals = rejection_sample(_rejection_frames(data, ws_root), K_PER_REASON)
    return Sample(lowest, drops, rejections, totals, size, pool, notes)


# --- reading the chosen pairs ---------------------------------------------------------------------------


def _pair_rows(path: Path | None, ids: list[str]) -> dict[str, dict[str, Any]]:
    if path is None or not ids:
        return {}
    frame = pl.scan_parquet(path)
    present = set(frame.collect_schema().names())
    rows = frame.select([c for c in PAIR_TEXT_COLUMNS if c in present]).filter(pl.col("pair_id").is_in(ids))
    return {row["pair_id"]: row for row in rows.collect().iter_rows(named=True)}


def _token_rows(splits: dict[str, pa.Table], ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    wanted = pa.array(ids, pa.string())
    for table in splits.values():
        columns = [
            c
            for c in ("pair_id", "prompt_ids", "chosen_ids", "rejected_ids", "common_prefix_len")
            if c in table.column_names
        ]
        if "pair_id" not in columns or not table.num_rows:
            continue
        picked = table.select(columns).filter(pc.is_in(table.column("pair_id"), value_set=wanted))
        for row in picked.to_pylist():
            found.setdefault(row["pair_id"], row)
    return found


def _run_rows(run: RunData, ids: list[str]) -> dict[str, dict[str, Any]]:
    if run.evaluation is None or not ids:
        return {}
    columns = (
        "pair_id",
        "chosen_token_delta",
        "delta_chosen_logps",
        "reward_margin",
        "correct",
        "delta_pre_edit",
        "delta_post_edit",
    )
    frame = run.evaluation.pairs(columns).filter(pl.col("pair_id").is_in(ids)).collect()
    return {row["pair_id"]: row for row in frame.iter_rows(named=True)}


class TokenText:
    """Chosen token ids as text pieces, one per token (the dataset's tokenizer, no torch): each piece is
    what the token adds to the decoded text, so byte-level and SentencePiece tokens read naturally."""

    WINDOW = 6  # tokens of left context: enough for a multi-byte character split over tokens

    def __init__(self, path: Path | None):
        self.backend = None
        if path is not None and (path / "tokenizer.json").is_file():
            try:
                from pipeline.tokenize import FastTokenizer

                self.backend = FastTokenizer(path).backend
            except (OSError, ValueError, RuntimeError):
                self.backend = None

    def pieces(self, ids: Sequence[int]) -> list[str]:
        ids = [int(i) for i in ids]
        if self.backend is None:
            return [f"#{i} " for i in ids]
        starts = [max(0, i - self.WINDOW) for i in range(len(ids))]
        windows = [ids[s:i] for i, s in enumerate(starts)] + [ids[s : i + 1] for i, s in enumerate(starts)]
        texts = self.backend.decode_batch(windows, skip_special_tokens=False)
        before, after = texts[: len(ids)], texts[len(ids) :]
        return [
            a[len(b) :] if a.startswith(b) else self.backend.decode([i], skip_special_tokens=False)
            for i, b, a in zip(ids, before, after, strict=True)
        ]


# --- rendering -------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


_WORDS = re.compile(r"\s+|\w+|[^\w\s]")


def diff_spans(chosen: str, rejected: str) -> tuple[str, str]:
    """Both answers as HTML with the differing spans marked (<mark>) and the first difference given the
    class `first`: by character when the answers are short and close, else by word."""
    far = max(len(chosen), len(rejected)) > CHAR_DIFF_LIMIT
    if not far:
        ratio = Levenshtein.normalized_distance(chosen, rejected)
        far = ratio > 0.3
    a = _WORDS.findall(chosen) if far else list(chosen)
    b = _WORDS.findall(rejected) if far else list(rejected)
    out_a, out_b, first = [], [], True
    for op in Levenshtein.opcodes(a, b):
        left, right = "".join(a[op.src_start : op.src_end]), "".join(b[op.dest_start : op.dest_end])
        if op.tag == "equal":
            out_a.append(_e(left))
            out_b.append(_e(right))
            continue
        # an empty side (an insertion or deletion) is a small gap mark, so the place shows on both
        marks = [
            " ".join(filter(None, ["" if side else "gap", "first" if first else ""]))
            for side in (left, right)
        ]
        first = False
        out_a.append(f"<mark class='{marks[0]}'>{_e(left)}</mark>")
        out_b.append(f"<mark class='{marks[1]}'>{_e(right)}</mark>")
    return "".join(out_a), "".join(out_b)


def _colour(delta: float, scale: float) -> str:
    strength = min(1.0, abs(delta) / scale) * 0.85
    rgb = "214,39,40" if delta < 0 else "31,119,180"
    return f"rgba({rgb},{strength:.2f})"


def token_strip(
    pieces: list[str], deltas: Sequence[float] | None, first_edit: int | None, scale: float
) -> str:
    """The chosen answer token by token: background by Δ log p (red fell, blue rose), the first token
    after the common prefix outlined, the value and index in each token's tooltip."""
    shown = pieces[:TOKENS_SHOWN]
    spans = []
    for index, piece in enumerate(shown):
        classes = "tok first" if index == first_edit else "tok"
        style, title = "", f"token {index}"
        if deltas is not None and index < len(deltas) and deltas[index] is not None:
            style = f" style='background:{_colour(float(deltas[index]), scale)}'"
            title += f": Δ log p {float(deltas[index]):+.3f}"
        if index == first_edit:
            title += " (first token after the common prefix)"
        spans.append(f"<span class='{classes}'{style} title='{_e(title)}'>{_e(piece)}</span>")
    more = (
        f"<span class='note'> … {len(pieces) - TOKENS_SHOWN:,} more tokens</span>"
        if len(pieces) > TOKENS_SHOWN
        else ""
    )
    return f"<div class='strip'>{''.join(spans)}{more}</div>"


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list):
        lines = [
            f"<b>{_e(m.get('role', '?'))}</b>: {_e(str(m.get('content', ''))[:TEXT_CHARS])}"
            for m in prompt
            if isinstance(m, dict)
        ]
        return "<br>".join(lines)
    return _e(str(prompt)[:TEXT_CHARS])


def _number(value: Any, form: str = "{:.4g}") -> str:
    if value is None:
        return "–"
    return (
        form.format(value)
        if isinstance(value, float)
        else f"{value:,}"
        if isinstance(value, int)
        else _e(value)
    )


@dataclass(frozen=True)
class Item:
    """One shown pair or rejection: its HTML and what the filters match it on."""

    html: str
    source: str
    reasons: tuple[str, ...]  # lowest-edit / largest-drop for pairs, stage/reason for rejections


@dataclass
class PairView:
    pair: dict[str, Any]
    tokens: dict[str, Any]
    runs: list[tuple[str, dict[str, Any]]]  # (run label, the run's eval row of this pair)
    tags: list[str]
    source: str


def _pair_meta(view: PairView) -> str:
    pair, tokens = view.pair, view.tokens
    chosen_ids, rejected_ids = tokens.get("chosen_ids") or [], tokens.get("rejected_ids") or []
    items = [
        ("source", f"{view.source} · row {pair.get('source_row', '?')}"),
        ("file", PurePosixPath(str(pair.get("source_uri", ""))).name),
        ("split", pair.get("split", "?")),
        (
            "edit ratio",
            f"{_number(pair.get('edit_ratio'), '{:.4f}')} ({_number(pair.get('edit_distance'))} chars)",
        ),
        (
            "chars chosen / rejected",
            f"{_number(pair.get('len_chosen_chars'))} / {_number(pair.get('len_rejected_chars'))}",
        ),
        (
            "tokens prompt / chosen / rejected",
            f"{len(tokens.get('prompt_ids') or [])} / {len(chosen_ids)} / {len(rejected_ids)}",
        ),
        ("common prefix", f"{_number(tokens.get('common_prefix_len'))} tokens"),
        (
            "scores chosen / rejected",
            f"{_number(pair.get('chosen_score'))} / {_number(pair.get('rejected_score'))}",
        ),
    ]
    return "".join(f"<span><i>{_e(k)}</i> {_e(v)}</span>" for k, v in items)


def _run_block(
    label: str, row: dict[str, Any], pieces: list[str], first_edit: int | None, scale: float
) -> str:
    deltas = row.get("chosen_token_delta")
    mismatch = deltas is not None and len(deltas) != len(pieces)
    facts = (
        f"Δ log p(chosen) {_number(row.get('delta_chosen_logps'), '{:+.3f}')} nats · per token before / from the "
        f"first edit {_number(row.get('delta_pre_edit'), '{:+.3f}')} / {_number(row.get('delta_post_edit'), '{:+.3f}')}"
        f" · margin {_number(row.get('reward_margin'), '{:+.3f}')} · {'ranked right' if row.get('correct') else 'ranked wrong'}"
    )
    warn = (
        f"<p class='note'>{len(deltas)} per-token values for {len(pieces)} tokens: not coloured</p>"
        if mismatch
        else ""
    )
    strip = token_strip(pieces, None if mismatch else deltas, first_edit, scale)
    return f"<div class='run'><div class='runhead'><b>{_e(label)}</b> {facts}</div>{warn}{strip}</div>"


def render_pair(view: PairView, text: TokenText, scale: float) -> str:
    pair, tokens = view.pair, view.tokens
    chosen, rejected = str(pair.get("chosen", ""))[:TEXT_CHARS], str(pair.get("rejected", ""))[:TEXT_CHARS]
    left, right = diff_spans(chosen, rejected)
    pieces = text.pieces(tokens.get("chosen_ids") or [])
    prefix = tokens.get("common_prefix_len")
    first_edit = int(prefix) if prefix is not None and int(prefix) < len(pieces) else None
    runs = "".join(_run_block(label, row, pieces, first_edit, scale) for label, row in view.runs)
    if not runs and pieces:
        runs = f"<div class='run'><div class='runhead'><b>chosen tokens</b> (no evaluation: not coloured)</div>{token_strip(pieces, None, first_edit, scale)}</div>"
    tags = "".join(f"<span class='tag'>{_e(t.replace('-', ' '))}</span>" for t in view.tags)
    return (
        f"<article class='item pair' data-source='{_e(view.source)}' data-reason='{_e(' '.join(view.tags))}' "
        f"data-edit='{pair.get('edit_ratio') if pair.get('edit_ratio') is not None else ''}'>"
        f"<h3><code>{_e(pair.get('pair_id'))}</code> {tags}</h3><div class='meta'>{_pair_meta(view)}</div>"
        f"<div class='prompt'>{_prompt(pair.get('prompt'))}</div>"
        f"<div class='answers'><div><h4>chosen</h4><pre>{left}</pre></div><div><h4>rejected</h4><pre>{right}</pre></div></div>"
        f"{runs}</article>"
    )


def render_rejection(row: dict[str, Any], source: str, total: int) -> str:
    reason = f"{row['stage']}/{row['reason']}"
    raw = row.get("raw")
    cut = " (cut)" if raw is not None and len(raw) >= RAW_CHARS else ""
    return (
        f"<article class='item rejection' data-source='{_e(source)}' data-reason='{_e(reason)}' data-edit=''>"
        f"<h3><span class='tag bad'>{_e(reason)}</span> <span class='note'>one of {total:,}</span></h3>"
        f"<div class='meta'><span><i>file</i> {_e(PurePosixPath(str(row.get('source_uri', ''))).name)}</span>"
        f"<span><i>row</i> {_e(row.get('source_row'))}</span><span><i>pair</i> {_e(row.get('pair_id') or '–')}</span></div>"
        f"<p><i>detail</i> {_e(row.get('detail') or '')}</p>"
        f"<pre class='raw'>{_e(raw if raw is not None else '(no raw record)')}</pre><span class='note'>{cut}</span></article>"
    )


def _scale(rows: Sequence[dict[str, dict[str, Any]]]) -> float:
    """Colour scale: the 95th percentile of |Δ| over every token shown (at least 0.05 nats)."""
    values = [
        abs(float(v))
        for by_pair in rows
        for row in by_pair.values()
        for v in (row.get("chosen_token_delta") or [])
        if v is not None
    ]
    return max(0.05, float(np.percentile(values, 95))) if values else 1.0


def _source_names(path: Path | None) -> dict[str, str]:
    """source_uri -> source label, so rejections filter under the same names as pairs."""
    if path is None:
        return {}
    frame = pl.scan_parquet(path)
    if not {"source", "source_uri"} <= set(frame.collect_schema().names()):
        return {}
    return dict(frame.select("source_uri", "source").unique("source_uri").collect().iter_rows())


def render(data: DatasetData, runs: Sequence[RunData], sample: Sample, title: str, back: str) -> str:
    ids = sample.pair_ids
    pairs, tokens = _pair_rows(data.pairs_path, ids), _token_rows(data.splits, ids)
    by_run = [(run.label, _run_rows(run, ids)) for run in runs]
    scale = _scale([rows for _, rows in by_run])
    text = TokenText(data.tokenizer_path)
    names = _source_names(data.pairs_path)
    items: list[Item] = []
    for pair_id in ids:
        if pair_id not in pairs:
            continue
        tags = [t for t, group in ((LOWEST, sample.lowest), (DROP, sample.drops)) if pair_id in group]
        view = PairView(
            pairs[pair_id],
            tokens.get(pair_id, {}),
            [(label, rows[pair_id]) for label, rows in by_run if pair_id in rows],
            tags,
            str(pairs[pair_id].get("source") or "?"),
        )
        items.append(Item(render_pair(view, text, scale), view.source, tuple(tags)))
    for row in sample.rejections.iter_rows(named=True):
        source = names.get(row["source_uri"]) or PurePosixPath(str(row["source_uri"])).name
        reason = f"{row['stage']}/{row['reason']}"
        items.append(
            Item(render_rejection(row, source, sample.rejection_totals.get(reason, 0)), source, (reason,))
        )
    return _page(title, back, data, runs, sample, items, scale, text.backend is not None)


def _options(values: Sequence[str]) -> str:
    return "".join(f"<option value='{_e(v)}'>{_e(v)}</option>" for v in values)


def _how(data: DatasetData, runs: Sequence[RunData], sample: Sample, scale: float, decoded: bool) -> str:
    evaluated = [r.label for r in runs if r.evaluation is not None]
    parts = [
        f"the {len(sample.lowest):,} {sample.pool} pairs of lowest edit ratio (of {sample.eval_pairs:,}; ties by pair id)",
    ]
    if evaluated:
        parts.append(
            f"the {len(sample.drops):,} pairs whose log p(chosen) fell most below the reference in any run "
            f"({', '.join(evaluated)}; at most {N_DROPS})"
        )
    total = sum(sample.rejection_totals.values())
    parts.append(
        f"the first {K_PER_REASON} rejections of each reason by file and row ({len(sample.rejections):,} of "
        f"{total:,} rejections; raw records cut to {RAW_CHARS:,} characters)"
        if total
        else "no rejections: none is recorded for this dataset's sources and build"
    )
    colour = (
        f"Token colours: change of log p(chosen) against the reference, red fell, blue rose, full colour at "
        f"±{scale:.3g} nats (the 95th percentile of |Δ| on this page); the outlined token is the first after "
        "the prefix chosen and rejected share."
        if evaluated
        else "No run of this report has an evaluation, so tokens are not coloured."
    )
    if not decoded:
        colour += " The dataset's tokenizer was not found: tokens show as ids."
    notes = "".join(f"<p class='note'>{_e(n)}</p>" for n in sample.notes)
    return f"<p>This page shows {'; '.join(parts)}. Answers are cut to {TEXT_CHARS:,} characters and token strips to {TOKENS_SHOWN:,} tokens. {_e(colour)}</p>{notes}"


def _page(
    title: str,
    back: str,
    data: DatasetData,
    runs: Sequence[RunData],
    sample: Sample,
    items: list[Item],
    scale: float,
    decoded: bool,
) -> str:
    sources = sorted({item.source for item in items})
    reasons = sorted({reason for item in items for reason in item.reasons})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<header><h1>{_e(title)}</h1><p><a href="{_e(back)}">← back to the report</a> · dataset {_e(data.dataset_id or "?")}</p></header>
<main>
<section class="how">{_how(data, runs, sample, scale, decoded)}</section>
<section class="filters">
<label>source <select id="f-source"><option value="">all</option>{_options(sources)}</select></label>
<label>why shown <select id="f-reason"><option value="">all</option>{_options(reasons)}</select></label>
<label>edit ratio from <input id="f-min" type="number" min="0" max="1" step="0.01" value="0"></label>
<label>to <input id="f-max" type="number" min="0" max="1" step="0.01" value="1"></label>
<span>showing <b id="shown">{len(items)}</b> of {len(items)}</span>
<span class="legend">Δ log p: <span class="tok" style="background:{_colour(-scale, scale)}">fell</span>
<span class="tok" style="background:{_colour(scale, scale)}">rose</span> <span class="tok first">first edit</span></span>
</section>
<div id="items">{"".join(item.html for item in items) or "<p class='note'>nothing to show</p>"}</div>
</main>
<script>{SCRIPT}</script>
</body></html>
"""


# Filtering: an item is shown when its source and reason match the selects and its edit ratio lies in
# the range; items without an edit ratio (rejections) are shown only while the range is the full [0, 1].
SCRIPT = """
(function () {
  const items = Array.from(document.querySelectorAll('#items .item'));
  const get = (id) => document.getElementById(id);
  function apply() {
    const source = get('f-source').value, reason = get('f-reason').value;
    const low = parseFloat(get('f-min').value), high = parseFloat(get('f-max').value);
    const lo = isNaN(low) ? 0 : low, hi = isNaN(high) ? 1 : high, full = lo <= 0 && hi >= 1;
    let shown = 0;
    for (const item of items) {
      const edit = item.dataset.edit === '' ? NaN : parseFloat(item.dataset.edit);
      const ok = (!source || item.dataset.source === source)
        && (!reason || item.dataset.reason.split(' ').includes(reason))
        && (isNaN(edit) ? full : edit >= lo && edit <= hi);
      item.hidden = !ok;
      if (ok) shown += 1;
    }
    get('shown').textContent = shown;
    document.body.dataset.shown = shown;
  }
  for (const id of ['f-source', 'f-reason', 'f-min', 'f-max']) {
    get(id).addEventListener('input', apply);
    get(id).addEventListener('change', apply);
  }
  apply();
})();
"""

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #f6f7f9; }
header { background: #1f2937; color: #fff; padding: 14px 28px; }
header h1 { margin: 0 0 4px 0; font-size: 20px; } header p { margin: 0; color: #cbd5e1; font-size: 13px; }
header a { color: #93c5fd; }
main { padding: 8px 28px 40px; max-width: 1500px; }
section { background: #fff; border-radius: 8px; padding: 10px 18px; margin: 12px 0; box-shadow: 0 1px 2px rgba(0,0,0,.08); font-size: 13px; }
.filters { display: flex; flex-wrap: wrap; gap: 16px; align-items: center; position: sticky; top: 0; z-index: 2; }
.filters input { width: 70px; }
.item { background: #fff; border-radius: 8px; padding: 8px 16px 12px; margin: 10px 0; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.item[hidden] { display: none; }
.item h3 { font-size: 13px; margin: 4px 0; }
.meta { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 12px; color: #444; margin-bottom: 6px; }
.meta i { color: #888; font-style: normal; }
.tag { display: inline-block; background: #e0e7ff; color: #3730a3; border-radius: 10px; padding: 0 8px; font-size: 11px; margin-left: 4px; }
.tag.bad { background: #fee2e2; color: #991b1b; }
.prompt { background: #f8fafc; border-left: 3px solid #cbd5e1; padding: 4px 10px; font-size: 12.5px; margin: 6px 0; max-height: 160px; overflow: auto; }
.answers { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.answers h4 { margin: 2px 0; font-size: 12px; color: #555; }
pre { white-space: pre-wrap; word-break: break-word; font-size: 12px; margin: 0; background: #fafafa; padding: 6px 8px; border-radius: 4px; max-height: 260px; overflow: auto; }
mark { background: #fde68a; } mark.first { outline: 2px solid #b45309; } mark.gap { padding: 0 2px; background: #fca5a5; }
.run { margin-top: 8px; } .runhead { font-size: 12px; color: #333; margin-bottom: 2px; }
.strip { font-family: ui-monospace, monospace; font-size: 12px; line-height: 1.9; white-space: pre-wrap; word-break: break-word; background: #fcfcfd; padding: 4px 6px; border: 1px solid #eee; border-radius: 4px; max-height: 220px; overflow: auto; }
.tok { border-radius: 2px; padding: 1px 0; }
.tok.first { outline: 2px solid #111; }
.raw { max-height: 180px; }
.note { color: #92400e; font-size: 12px; }
.legend .tok { padding: 1px 6px; margin: 0 2px; }
"""


def write(
    path: Path, data: DatasetData, runs: Sequence[RunData], ws_root: Path, title: str, back: str
) -> tuple[Path, Sample]:
    """Write the inspector page at `path`; returns it and what it sampled."""
    sample = choose(data, runs, ws_root)
    path.write_text(render(data, runs, sample, title, back), encoding="utf-8")
    return path, sample
