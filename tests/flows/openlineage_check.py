"""Validate OpenLineage events written as JSONL against the RunEvent schema and the run life cycle."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).with_name("openlineage_runevent.schema.json")


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_events(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Assert every event validates and every run has START first and exactly one COMPLETE/FAIL last.
    Returns the events grouped by run id."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(
        json.loads(SCHEMA.read_text(encoding="utf-8")),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        errors = sorted(validator.iter_errors(event), key=str)
        assert not errors, f"event does not validate: {errors[0].message} at {list(errors[0].absolute_path)}"
        uuid.UUID(event["run"]["runId"])  # the format checker may lack its optional dependencies
        datetime.fromisoformat(event["eventTime"])
        assert event["schemaURL"].startswith("https://openlineage.io/spec/")
        runs[event["run"]["runId"]].append(event)
    for run_id, run_events in runs.items():
        kinds = [e["eventType"] for e in run_events]
        assert kinds[0] == "START" and kinds[-1] in ("COMPLETE", "FAIL") and len(kinds) == 2, (run_id, kinds)
    return runs
