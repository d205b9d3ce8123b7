"""The report of a real `dpop run --losses dpop:50,dpo` comparison (tiny sizes): every section and figure,
computed text, the lineage drawn once per artefact, `dpop report A B` and its refusal of runs on other
data, identical batch orders in the two runs, and the pages in headless Chromium: every image loads,
and the pair inspector's filters change the visible rows (driven over the DevTools protocol)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from pipeline.report import build_report, gather
from pipeline.report.compare import summarise
from pipeline.report.inspector import N_DROPS, N_LOWEST, TokenText
from pipeline.workspace import Workspace

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIGURES = ("headline", "training", "funnel", "edit_ratio", "token_lengths")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _evaluate(ws: Workspace, run_ids: list[str]) -> None:
    """Each run's evaluation: the chain's eval stage wrote it; where the chain has none, the stage is run
    here (`dpop.evaluate`), the same stage on the same inputs."""
    from pipeline.report.evals import find_evaluation

    try:
        from dpop.evaluate import evaluate
    except ImportError:
        return
    for run_id in run_ids:
        if find_evaluation(ws, run_id) is None:
            run = json.loads((ws.run_dir(run_id) / "run.json").read_text())
            evaluate(ws, run["model_dir"], run["reference_model"]["path"], run["dataset_id"])


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, list[str]]:
    """A real comparison through the stage functions: 120 synthetic pairs (and 6 rows to reject), a tiny
    model, 6 SFT steps, 4 steps of DPOP λ=50 and of DPO from the same reference."""
    root = tmp_path_factory.mktemp("report")
    config = root / "dpop.yaml"
    assert CliRunner().invoke(app, ["init", str(config)]).exit_code == 0
    config.write_text(
        config.read_text()
        .replace("hidden_size: 128", "hidden_size: 32")
        .replace("vocab_size: 768", "vocab_size: 400")
        .replace("eval_steps: 20", "eval_steps: 2")
        .replace("logging_steps: 5", "logging_steps: 1")
        # no promotion gate (its generation eval is not what this report reads; where the defaults have
        # no gate this changes nothing)
        .replace("gate:\n  enabled: true", "gate:\n  enabled: false")
    )
    # the demo's pairs plus rows that become rejections: two malformed lines, a non-object, two
    # repeated pairs, a pair whose answers are the same
    from demo.synth_math import write_math_pairs

    data = write_math_pairs(root / "data" / "synth-math-n120-seed0.jsonl", 120, seed=0)
    lines = data.read_text().splitlines()
    same = json.dumps({"prompt": "Same?", "chosen": "yes", "rejected": "yes"})
    data.write_text("\n".join([*lines, "{not json", '{"prompt": "x"', "[1, 2]", *lines[:2], same]) + "\n")
    args = ["run", "-w", str(root / "ws"), "--input", str(data), "--config", str(config), "--steps", "4"]
    args += ["--sft-steps", "6", "--engine", "direct", "--no-report", "--losses", "dpop:50,dpo"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ws = Workspace.open(root / "ws")
    first = next(ws.runs_dir.iterdir())
    runs = json.loads((first / "chain.json").read_text())["runs"]
    assert len(runs) == 2
    _evaluate(ws, runs)
    return ws, runs


def _evaluated(ws: Workspace, runs: list[str]) -> bool:
    from pipeline.report.evals import find_evaluation

    return all(find_evaluation(ws, r) is not None for r in runs)


@pytest.mark.slow
def test_the_report_of_a_losses_run_is_the_comparison(comparison: tuple[Workspace, list[str]]) -> None:
    ws, runs = comparison
    index = build_report(ws, runs[1])  # the DPO run's report shows the chain's comparison
    assert index == ws.run_dir(runs[1]) / "report" / "index.html"
    page = index.read_text()
    figures = [*FIGURES, "groups"] if _evaluated(ws, runs) else FIGURES
    for name in figures:
        assert (index.parent / f"{name}.png").stat().st_size > 10_000, name
        assert f"src='{name}.png'" in page
    assert "dpop report · DPOP λ=50 vs DPO" in page and all(r in page for r in runs)
    assert "synth-math-n120-seed0.jsonl" in page and (index.parent / "inspector.html").is_file()
    assert not list(index.parent.parent.glob(".tmp-*"))  # written atomically
    # the old fixed sentence is gone; every claim is computed (here: from these runs' numbers)
    assert "DPOP keeps logps/chosen at or above the reference while" not in page
    data = gather(ws, runs[0])
    summaries = [summarise(r, data.dataset) for r in data.runs]
    assert [r.run_id for r in data.runs] == runs and [s.label for s in summaries] == ["DPOP λ=50", "DPO"]
    for s in summaries:
        verb = "fell" if s.chosen_delta < 0 else "rose" if s.chosen_delta > 0 else "stayed"
        assert f"{s.label}: log p(chosen) {verb}" in page
        assert ("is at chance" in page) >= s.at_chance  # a run at chance is told so
    assert "The base model is the demo&#x27;s tiny Llama" in page
    # the lineage is a graph: each artefact drawn once, whichever path reaches it
    ids = re.findall(r"<g class='node' data-id='([^']+)'", page)
    assert (
        len(ids) == len(set(ids)) and set(runs) <= set(ids) and any(i.startswith("model-sft-") for i in ids)
    )
    # booleans read as true/false in the configuration table
    assert "<th>bf16</th><td class='num'>false</td>" in page
    # both runs' reports are the same comparison page
    assert build_report(ws, runs[0]).read_text() == page


@pytest.mark.slow
def test_report_cli_compares_runs_and_refuses_runs_on_other_data(
    comparison: tuple[Workspace, list[str]], tmp_path: Path
) -> None:
    ws, runs = comparison
    result = CliRunner().invoke(app, ["report", *runs, "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    chain = json.loads((ws.run_dir(runs[0]) / "chain.json").read_text())
    assert (ws.root / "reports" / chain["comparison_id"] / "index.html").is_file()
    alone = CliRunner().invoke(
        app, ["report", runs[1], "--alone", "-w", str(ws.root), "--out", str(tmp_path / "a")]
    )
    assert alone.exit_code == 0, alone.output
    assert "dpop report · DPO</title>" in (tmp_path / "a" / "index.html").read_text()
    # a run trained on other pairs: its record names another dataset version
    other = ws.run_dir("run-elsewhere")
    shutil.copytree(ws.run_dir(runs[1]), other, ignore=shutil.ignore_patterns("checkpoint-*", "model"))
    record = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**record, "dataset_id": "ds-0123456789abcdef"}))
    refused = CliRunner().invoke(app, ["report", runs[0], "run-elsewhere", "-w", str(ws.root)])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    [line] = refused.output.strip().splitlines()
    assert "these runs share no dataset" in line and "run-elsewhere on ds-0123456789abcdef" in line
    missing = CliRunner().invoke(app, ["report", "no-such-run", "-w", str(ws.root)])
    assert missing.exit_code == 1 and "run 'no-such-run' not found" in missing.output
    shutil.rmtree(other)


@pytest.mark.slow
def test_the_runs_of_a_comparison_saw_the_same_batches(
    comparison: tuple[Workspace, list[str]], tmp_path: Path
) -> None:
    """The batches each run's Trainer draws, re-derived from each run's recorded config with the real
    DPOPTrainer (its sampler and data loader): the same pair ids in the same order, step by step."""
    from transformers import AutoTokenizer

    from dpop.config import TrainConfig
    from dpop.data import ShardDataset
    from dpop.logps import PairCollator
    from dpop.model_io import load_causal_lm
    from dpop.trainer import DPOPTrainer

    ws, runs = comparison

    def batches(run_id: str, seed_offset: int = 0) -> list[list[str]]:
        run = json.loads((ws.run_dir(run_id) / "run.json").read_text())
        config = TrainConfig.from_dict(run["config"], source="run.json")
        seed = config.seed + seed_offset
        args = dataclasses.replace(
            config, output_dir=str(tmp_path / "args"), use_cpu=True, seed=seed, data_seed=seed
        )
        model_path = run["base_model"]["path"]
        dataset = ShardDataset.open(ws, run["dataset_id"], "train")
        pad = AutoTokenizer.from_pretrained(model_path).pad_token_id or 0
        trainer = DPOPTrainer(
            model=load_causal_lm(Path(model_path)),
            args=args,
            train_dataset=dataset,
            data_collator=PairCollator(pad_token_id=pad),
        )
        ids = dataset.table.column("pair_id").to_pylist()
        loader = trainer.get_train_dataloader()
        steps = list(loader.batch_sampler)[: config.max_steps]
        return [[ids[i] for i in batch] for batch in steps]

    first, second = batches(runs[0]), batches(runs[1])
    assert len(first) == 4 and all(len(b) == 16 for b in first)
    assert first == second
    assert batches(runs[0], seed_offset=1) != first  # the check can fail: another seed, other batches


def _pieces_equal_decode(ws: Workspace, runs: list[str]) -> None:
    data = gather(ws, runs[0])
    text = TokenText(data.dataset.tokenizer_path)
    assert text.backend is not None
    for ids in data.dataset.splits["eval"].column("chosen_ids").to_pylist()[:10]:
        assert "".join(text.pieces(ids)) == text.backend.decode(ids, skip_special_tokens=False)


@pytest.mark.slow
def test_the_inspector_shows_bounded_pairs_with_per_token_changes(
    comparison: tuple[Workspace, list[str]],
) -> None:
    ws, runs = comparison
    _pieces_equal_decode(ws, runs)
    index = build_report(ws, runs[0])
    page = (index.parent / "inspector.html").read_text()
    pairs = re.findall(r"<article class='item pair'", page)
    assert 0 < len(pairs) <= N_LOWEST + N_DROPS
    assert page.count("<span class='tok first'") >= len(pairs)  # the first differing token, per strip
    assert "This page shows the 13 eval pairs of lowest edit ratio (of 13; ties by pair id)" in page
    if _evaluated(ws, runs):
        assert "rgba(214,39,40" in page and "<b>DPOP λ=50</b>" in page and "<b>DPO</b>" in page


# --- in the browser --------------------------------------------------------------------------------


def _chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/install_chromium.sh installs Debian's package)")
    return CHROMIUM


class DevTools:
    """A headless Chromium driven over the DevTools protocol (websocket, no browser download)."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [
            _chromium(),
            *CHROMIUM_FLAGS,
            f"--remote-debugging-port={port}",
            "--remote-allow-origins=*",
        ]
        self.process = subprocess.Popen(
            [*command, f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline, targets = time.monotonic() + 60, []
        while not targets:
            assert time.monotonic() < deadline, "chromium's DevTools endpoint did not come up"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as answer:
                    targets = [t for t in json.load(answer) if t.get("type") == "page"]
            except OSError:
                time.sleep(0.2)
        self.socket = connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.counter = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.counter += 1
        self.socket.send(json.dumps({"id": self.counter, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.counter:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def open(self, path: Path) -> None:
        self.call("Page.navigate", url=path.as_uri())
        deadline = time.monotonic() + 60
        while self.evaluate("document.readyState") != "complete":
            assert time.monotonic() < deadline, f"{path} did not load"
            time.sleep(0.1)

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    tools = DevTools(tmp_path / "profile")
    try:
        yield tools
    finally:
        tools.close()


@pytest.mark.slow
def test_chromium_loads_every_image_of_the_comparison(
    comparison: tuple[Workspace, list[str]], browser: DevTools, tmp_path: Path
) -> None:
    ws, runs = comparison
    index = build_report(ws, runs, tmp_path / "report")
    browser.open(index)
    images = browser.evaluate(
        "Promise.all([...document.images].map(i => i.decode().then(() => [i.id, i.naturalWidth], () => [i.id, 0])))"
    )
    expected = {f"plot-{name}" for name in FIGURES} | ({"plot-groups"} if _evaluated(ws, runs) else set())
    assert {name for name, _ in images} == expected
    assert all(width >= 300 for _, width in images), images  # a missing or broken file decodes to 0
    shot = tmp_path / "page.png"
    subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'shot'}", "--window-size=1400,2400",
         f"--screenshot={shot}", index.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2400)
    # Plots are drawn in colour; a page whose images failed to load would be white cards and grey text.
    colours = image.resize((350, 600)).getcolors(350 * 600)
    assert sum(count for count, (r, g, b) in colours if max(r, g, b) - min(r, g, b) > 80) > 2_000


@pytest.mark.slow
def test_the_inspector_filters_change_the_visible_rows(
    comparison: tuple[Workspace, list[str]], browser: DevTools
) -> None:
    ws, runs = comparison
    index = build_report(ws, runs[0])
    browser.open(index.parent / "inspector.html")
    visible = "[...document.querySelectorAll('#items .item')].filter(i => !i.hidden).length"
    total = browser.evaluate("document.querySelectorAll('#items .item').length")
    assert total > 0 and browser.evaluate(visible) == total == int(
        browser.evaluate("document.body.dataset.shown")
    )

    def set_value(element: str, value: str) -> int:
        browser.evaluate(
            f"(() => {{ const e = document.getElementById('{element}'); e.value = '{value}';"
            " e.dispatchEvent(new Event('change')); })()"
        )
        return browser.evaluate(visible)

    # the edit-ratio range: only pairs inside it (rejections have none and leave with any narrowing)
    edits = browser.evaluate("[...document.querySelectorAll('#items .item')].map(i => i.dataset.edit)")
    ratios = sorted(float(e) for e in edits if e)
    middle = ratios[len(ratios) // 2]
    shown = set_value("f-max", str(middle))
    assert shown == sum(r <= middle for r in ratios) < total
    assert browser.evaluate("document.getElementById('shown').textContent") == str(shown)
    assert set_value("f-max", "1") == total
    # the reason: the lowest-edit pairs only
    lowest = browser.evaluate(
        "document.querySelectorAll(\"#items .item[data-reason~='lowest-edit']\").length"
    )
    assert 0 < set_value("f-reason", "lowest-edit") == lowest
    # a rejection reason: its sampled rejections, raw record shown
    assert set_value("f-reason", "ingest/malformed_json") == 2
    assert browser.evaluate(
        "[...document.querySelectorAll('#items .item')].filter(i => !i.hidden)"
        ".every(i => i.classList.contains('rejection') && i.querySelector('pre.raw'))"
    )
    assert set_value("f-reason", "curate/duplicate_pair") == 2
    assert set_value("f-reason", "") == total
    # each source: its items
    for source in browser.evaluate("[...document.getElementById('f-source').options].map(o => o.value)")[1:]:
        count = browser.evaluate(
            f"[...document.querySelectorAll('#items .item')].filter(i => i.dataset.source === {json.dumps(source)}).length"
        )
        assert set_value("f-source", source) == count > 0
    assert set_value("f-source", "") == total
