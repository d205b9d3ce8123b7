"""The OpenLineage HTTP recipe (docs/ecosystem.md): a real build stage sends its START and COMPLETE events,
with inputs, outputs and row counts, to an HTTP endpoint configured the standard way (`OPENLINEAGE_URL`, or
an `openlineage.yml` with an http transport). A local `http.server` in a thread stands for Marquez. An
endpoint that is down does not fail the stage: the events wait in `<ws>/lineage/undelivered.jsonl`."""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.build import build_dataset
from pipeline.openlineage import UNDELIVERED, reset_clients
from tests.flows.openlineage_check import check_events
from tests.pipeline._pairs import tiny_tokenizer, write_ingest


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet test output
        pass


@pytest.fixture
def marquez():
    """A lineage endpoint on 127.0.0.1: `.url`, and `.received` [(path, authorization, event)]."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _standard_config_only(monkeypatch, tmp_path):
    """No OpenLineage setting from the machine: no variables, no openlineage.yml in the cwd or home."""
    import os

    for name in list(os.environ):
        if name.startswith("OPENLINEAGE"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    reset_clients()
    yield
    reset_clients()


def run_build(workspace, tmp_path):
    rows = [
        {"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
        for i in range(30)
    ]
    ingests = [write_ingest(workspace.root, rows, "maths")]
    return build_dataset(
        workspace, {"split": {"eval_fraction": 0.2}}, tiny_tokenizer(tmp_path / "tok"), ingests
    )


def build_events(received):
    return [event for path, auth, event in received if event["job"]["name"] == "build"]


def test_openlineage_url_sends_start_and_complete_with_inputs_and_outputs(
    workspace, tmp_path, marquez, monkeypatch
):
    monkeypatch.setenv("OPENLINEAGE_URL", marquez.url)
    result = run_build(workspace, tmp_path)

    assert {path for path, _, _ in marquez.received} == {"/api/v1/lineage"}
    check_events([event for _, _, event in marquez.received])  # schema, and START then one COMPLETE per run
    start, complete = build_events(marquez.received)
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"]
    inputs = [item["name"] for item in complete["inputs"]]
    assert inputs == [item["name"] for item in start["inputs"]]
    assert any(name.endswith("pairs.parquet") for name in inputs) and str(tmp_path / "tok") in inputs
    outputs = {
        item["name"]: item["outputFacets"]["outputStatistics"]["rowCount"] for item in complete["outputs"]
    }
    assert outputs[str(result.dataset_dir)] == outputs[str(result.dataset_dir / "pairs.parquet")] == 30
    shards = [rows for name, rows in outputs.items() if name.endswith(".arrow")]
    assert sum(shards) == result.rows_kept == 30 and len(shards) == 2  # train and eval
    assert not workspace.lineage_events_path.exists()  # the HTTP transport replaces the workspace file
    assert not (workspace.root / "lineage" / UNDELIVERED).exists()


def test_openlineage_yml_http_transport_with_endpoint_and_api_key(workspace, tmp_path, marquez, monkeypatch):
    config = tmp_path / "conf" / "openlineage.yml"
    config.parent.mkdir()
    config.write_text(
        "transport:\n"
        "  type: http\n"
        f"  url: {marquez.url}\n"
        "  endpoint: api/v2/lineage\n"
        "  timeout: 5\n"
        "  auth:\n"
        "    type: api_key\n"
        "    apiKey: not-a-real-key\n"
    )
    monkeypatch.setenv("OPENLINEAGE_CONFIG", str(config))
    run_build(workspace, tmp_path)
    assert [event["eventType"] for event in build_events(marquez.received)] == ["START", "COMPLETE"]
    assert {(path, auth) for path, auth, _ in marquez.received} == {
        ("/api/v2/lineage", "Bearer not-a-real-key")
    }


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_endpoint_that_is_down_keeps_the_events_and_the_stage_succeeds(
    workspace, tmp_path, marquez, monkeypatch, caplog
):
    config = tmp_path / "openlineage.yml"  # found in the working directory
    config.write_text(
        "transport:\n  type: http\n"
        f"  url: http://127.0.0.1:{_closed_port()}\n"
        "  timeout: 1\n  retry:\n    total: 0\n"
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.openlineage"):
        result = run_build(workspace, tmp_path)
    assert result.rows_kept == 30 and (result.dataset_dir / "manifest.json").is_file()
    kept = workspace.root / "lineage" / UNDELIVERED
    lines = kept.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["eventType"] for e in events if e["job"]["name"] == "build"] == ["START", "COMPLETE"]
    check_events(events)
    warnings = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(warnings) == len(events) and str(kept) in warnings[0] and "\n" not in warnings[0]

    # the docs' replay: POST each kept line as it is once the endpoint is back
    for line in lines:
        request = urllib.request.Request(
            f"{marquez.url}/api/v1/lineage", data=line.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
    assert [event for _, _, event in marquez.received] == events


def test_composite_transport_sends_to_the_endpoint_and_keeps_a_file(workspace, tmp_path, marquez):
    """The recipe for keeping the JSONL file as well: a composite transport (http + file)."""
    copy = tmp_path / "events-copy.jsonl"
    (tmp_path / "openlineage.yml").write_text(
        "transport:\n  type: composite\n  continue_on_failure: true\n  transports:\n"
        f"    - type: http\n      url: {marquez.url}\n"
        f"    - type: file\n      log_file_path: {copy}\n      append: true\n"
    )
    run_build(workspace, tmp_path)
    sent = [event for _, _, event in marquez.received]
    assert [e["eventType"] for e in build_events(marquez.received)] == ["START", "COMPLETE"]
    assert [json.loads(line) for line in copy.read_text().splitlines()] == sent
