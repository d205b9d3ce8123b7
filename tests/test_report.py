"""The report of a real small run: every figure is written, the page links them, and headless
Chromium renders the page with its plots loaded."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline.report import build_report, gather
from pipeline.workspace import Workspace

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIGURES = ("training", "funnel", "edit_ratio", "token_lengths")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str]:
    """A real run through the stage functions: 120 synthetic pairs, a tiny model, 4 DPOP steps."""
    root = tmp_path_factory.mktemp("report")
    config = root / "dpop.yaml"
    assert CliRunner().invoke(app, ["init", str(config)]).exit_code == 0
    config.write_text(
        config.read_text()
        .replace("hidden_size: 128", "hidden_size: 32")
        .replace("vocab_size: 768", "vocab_size: 400")
        .replace("eval_steps: 20", "eval_steps: 2")
        .replace("logging_steps: 5", "logging_steps: 1")
    )
    args = ["run", "-w", str(root / "ws"), "--config", str(config), "--n", "120", "--steps", "4"]
    result = CliRunner().invoke(app, [*args, "--sft-steps", "6", "--engine", "direct", "--no-report"])
    assert result.exit_code == 0, result.output
    ws = Workspace.open(root / "ws")
    [run_dir] = list(ws.runs_dir.iterdir())
    return ws, run_dir.name


@pytest.mark.slow
def test_report_has_every_figure_and_section(small_run: tuple[Workspace, str]) -> None:
    ws, run_id = small_run
    index = build_report(ws, run_id)
    assert index == ws.run_dir(run_id) / "report" / "index.html"
    page = index.read_text()
    for name in FIGURES:
        assert (index.parent / f"{name}.png").stat().st_size > 10_000, name
        assert f"src='{name}.png'" in page
    # the numbers on the page are the run's: pairs in the funnel, its lineage down to the source file
    assert "synth-math-n120-seed0.jsonl" in page
    assert run_id in page and "source_file" in page and "reward accuracy" in page
    assert not list(index.parent.parent.glob(".tmp-*"))  # written atomically
    # the figures' data: every synthetic pair ingested and kept, the funnel from the manifest
    data = gather(ws, run_id)
    assert data.ingested is not None and data.ingested.height == 120
    assert data.pairs is not None and data.pairs.height == 120
    assert data.funnel[0]["rows_in"] == 120 and sum(len(v) for v in data.token_lengths.values()) == 3 * 120
    assert data.reference_chosen_logps is not None and data.reference_chosen_logps < 0


@pytest.mark.slow
def test_report_cli_and_missing_run(small_run: tuple[Workspace, str], tmp_path: Path) -> None:
    ws, run_id = small_run
    out = tmp_path / "elsewhere"
    result = CliRunner().invoke(app, ["report", run_id, "-w", str(ws.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file() and (out / "training.png").is_file()
    missing = CliRunner().invoke(app, ["report", "no-such-run", "-w", str(ws.root)])
    assert missing.exit_code == 1 and "run 'no-such-run' not found" in missing.output


@pytest.mark.slow
def test_chromium_renders_the_page_with_its_plots(small_run: tuple[Workspace, str], tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/install_chromium.sh installs Debian's package)")
    ws, run_id = small_run
    index = build_report(ws, run_id)
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--run-all-compositor-stages-before-draw",
    ]
    # A copy of the report with one script that writes each image's decoded width into the DOM: the
    # report itself has no scripts, and an <img> whose file is missing or broken decodes to width 0.
    probe = tmp_path / "probe"
    shutil.copytree(index.parent, probe)
    script = (
        "<script>window.addEventListener('load', () => document.body.setAttribute('data-widths', "
        "[...document.images].map(i => i.id + ':' + i.naturalWidth).join(',')));</script>"
    )
    (probe / "index.html").write_text(index.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", (probe / "index.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    widths = dict(item.split(":") for item in dom.stdout.split('data-widths="')[1].split('"')[0].split(","))
    assert {f"plot-{name}" for name in FIGURES} == set(widths)
    assert all(int(width) >= 300 for width in widths.values()), widths
    shot = tmp_path / "page.png"
    subprocess.run(
        [*flags, "--window-size=1400,2400", f"--screenshot={shot}", index.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2400)
    # Plots are drawn in colour (blue/red/green curves and bars); a page whose images failed to load
    # would be white cards and grey text only.
    colours = image.resize((350, 600)).getcolors(350 * 600)
    saturated = sum(count for count, (r, g, b) in colours if max(r, g, b) - min(r, g, b) > 80)
    assert saturated > 2_000
