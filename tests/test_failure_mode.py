"""benchmarks/failure_mode.py's own code path on a tiny configuration: its chains (ingest, tiny model,
build, SFT, reference log-probs, DPO/DPOP runs, one eval per run) through `flows.chain.data_to_model`,
its JSON, table, plot and page (and `--replot` from the JSON), and the chain's evaluation step: every run
of a comparison evaluated on one eval set, found up to date by the probe, skipped on an empty eval split."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from flows.chain import data_to_model, probe, summary
from pipeline.stage import INLINE
from pipeline.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location(
        "failure_mode_benchmark", REPO / "benchmarks" / "failure_mode.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def tiny(benchmark):
    return benchmark.Settings(
        synth_pairs=40,
        steps=2,
        eval_every=1,
        batch_size=4,
        sft_steps=2,
        vocab_size=300,
        hidden_size=32,
        layers=1,
        heads=2,
        eval_fraction=0.3,
    )


def test_the_benchmark_runs_the_products_chain(benchmark, tmp_path: Path, monkeypatch) -> None:
    settings = tiny(benchmark)
    [result] = benchmark.run_benchmark(settings, tmp_path / "ws", quick=True)
    runs = result["runs"]
    assert list(runs) == ["dpo", "dpop:5", "dpop:50"]
    assert [run["lambda"] for run in runs.values()] == [0.0, 5.0, 50.0]
    assert len({run["eval_set_id"] for run in runs.values()}) == 1  # one eval set for the comparison
    assert (
        len({run["eval_id"] for run in runs.values()}) == 3 and len({r["run_id"] for r in runs.values()}) == 3
    )
    assert result["eval_pairs"] > 0 and result["train_pairs"] + result["eval_pairs"] <= 40
    for run in runs.values():
        start, end = run["curve"][0], run["curve"][-1]
        assert start["step"] == 0 and end["step"] == settings.steps
        # step 0 is the reference itself (eval_on_start): no change yet, and no pair correct (margin 0)
        assert start["logps/chosen_minus_ref"] == pytest.approx(0, abs=1e-3)
        assert start["token_delta/post_edit"] == 0 and start["rewards/accuracies"] == 0
        # the eval stage's numbers are the trainer's own last evaluation of the same split
        final = run["final"]
        assert final["rewards/accuracies"] == pytest.approx(end["rewards/accuracies"])
        assert final["logps/chosen_delta"] == pytest.approx(end["logps/chosen_minus_ref"], abs=1e-3)
        assert final["logps/chosen_post_edit_delta"] == pytest.approx(end["token_delta/post_edit"], abs=1e-4)
        assert sum(bucket["n"] for bucket in run["buckets"].values()) == result["eval_pairs"]

    # the page: table, buckets, plot; `--replot` redraws both from the JSON alone
    out, doc, png = (
        tmp_path / "failure_mode.json",
        tmp_path / "failure_mode.md",
        tmp_path / "failure_mode.png",
    )
    monkeypatch.setattr(benchmark, "OUT", out)
    monkeypatch.setattr(benchmark, "DOC", doc)
    monkeypatch.setattr(benchmark, "PLOT", png)
    document = {
        "settings": dataclasses.asdict(settings),
        "command": "tiny",
        "date": "2026-11-30",
        "machine": {"cpus": 2, "torch_threads": 2, "load_1min": [1.0, 3.0, 2.0]},
        "seconds": 10.0,
        "cpu_seconds": 16.0,
        "results": [result],
    }
    out.write_text(json.dumps(document), encoding="utf-8")
    benchmark.main(["--replot"])
    assert png.stat().st_size > 10_000
    page = doc.read_text(encoding="utf-8")
    assert benchmark.table([result]) in page and benchmark.bucket_table([result]) in page
    assert page.count("| synthetic math | D") == 3 and runs["dpo"]["eval_set_id"] in page
    # when, where and under which load it was timed; the standalone script's numbers beside these
    assert "16 CPU-s" in page and "2026-11-30" in page and "load average 1.0-3.0 (mean 2.0" in page
    assert f"{runs['dpo']['final']['logps/chosen_delta']:+.1f})" in page and "-52.2" in page

    # the chain again: every stage, the evaluations included, is found done, by the probe too
    spec = benchmark.chain_spec(settings)
    again = data_to_model(Workspace.open(tmp_path / "ws"), spec, INLINE)
    assert again.status == "up to date"
    assert again.gate.decision["outcome"] == "disabled"  # a comparison: no alias moves, no generation eval
    assert [e.id for e in again.evals] == [run["eval_id"] for run in runs.values()]
    probed = probe(Workspace.open(tmp_path / "ws"), spec)
    assert probed is not None and [e.id for e in probed.evals] == [e.id for e in again.evals]
    assert [r["eval_id"] for r in summary(probed)["runs"]] == [e.id for e in again.evals]


def test_no_eval_split_no_evaluation(benchmark, tmp_path: Path) -> None:
    settings = dataclasses.replace(tiny(benchmark), eval_fraction=0.0)
    spec = dataclasses.replace(benchmark.chain_spec(settings), training=({"max_steps": 1, "report_to": []},))
    result = data_to_model(Workspace.open(tmp_path / "ws"), spec, INLINE)
    assert result.build.counts["eval_rows"] == 0 and result.evals == (None,)
    assert summary(result)["runs"][0]["eval_id"] is None


@pytest.mark.slow
@pytest.mark.real_data
def test_gsm8k_chain_keeps_the_low_edit_pairs(
    benchmark, shared_data: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(
        benchmark,
        "GSM8K_SOLUTIONS",
        shared_data / "openai_grade-school-math" / "example_model_solutions.jsonl",
    )
    settings = dataclasses.replace(tiny(benchmark), gsm8k_max_edit_ratio=0.3, eval_fraction=0.2)
    [(_, synthetic), (name, spec)] = benchmark.datasets(settings, quick=False)
    assert name.startswith("GSM8K") and spec.fmt == "model_solutions"
    result = data_to_model(Workspace.open(tmp_path / "ws"), spec, INLINE)
    from dpop.evaluate import read_pairs

    pairs = read_pairs(result.ws, result.evals[0]).to_pylist()
    assert pairs and max(p["edit_ratio"] for p in pairs) <= 0.3
    assert {p["source"] for p in pairs} == {"example_model_solutions:model_solutions"}


def test_load_sampler_samples_until_the_run_ends(benchmark) -> None:
    import time

    with benchmark.LoadSampler(every=0.01) as load:
        time.sleep(0.1)
    assert len(load.samples) >= 3  # the start, some while it ran, the end
    assert all(isinstance(x, float) and x >= 0 for x in load.samples)
