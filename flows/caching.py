"""Content-addressed caching of Prefect tasks, with results kept inside the workspace.

A task's cache key is (what it reads, how, which code): the source file's sha256, or the ids of the
ingests / dataset version it consumes, plus a hash of its config and `pipeline.version.code_version()`.
So an unchanged input is never recomputed, a changed file or config is, and new code invalidates
everything it could have changed. Results (small dicts of ids and paths) are JSON files under
`<ws>/cache`, never in `~/.prefect`, so a workspace carries its own cache wherever it is copied and the
ephemeral Prefect server can be thrown away.

A cache hit is trusted only while its outputs still exist on disk: `outputs_present` is checked by
the flows, which re-run the task with `refresh_cache=True` otherwise (e.g. a deleted run folder).
"""

from __future__ import annotations

import dataclasses
import datetime
from functools import cache
from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext

from pipeline.identity import file_sha256, stable_hash, tree_sha256
from pipeline.version import code_version
from pipeline.workspace import Workspace

KEY_HEX = 32


def result_storage(ws: Workspace) -> Path:
    """Where task results and cache records live (Prefect turns a Path into a LocalFileSystem)."""
    ws.cache_dir.mkdir(parents=True, exist_ok=True)
    return ws.cache_dir


def config_hash(config: Any) -> str:
    """Stable hash of a config given as a dataclass, a mapping or None."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return stable_hash(config, KEY_HEX)


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def content_sha256(path: str | Path) -> str:
    """sha256 of a file or folder's content, memoised per (path, size, mtime) within a process."""
    path = Path(path)
    if path.is_dir():
        return tree_sha256(path)
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _key(stage: str, *parts: Any) -> str:
    return f"dpop-{stage}-" + stable_hash([stage, code_version(), *parts], KEY_HEX)


def ingest_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """(file sha256, its path, format, name, options, code version). Hub datasets are not cached here
    (they have no local bytes to hash); their ingest still reuses a finished ingest folder."""
    source = Path(parameters["source"])
    if not source.exists():
        return None
    return _key(
        "ingest",
        parameters["workspace"],
        content_sha256(source),
        str(source.resolve()),
        parameters.get("fmt"),
        parameters.get("name"),
        config_hash(parameters.get("options")),
    )


def build_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """(the ingests it curates, curation config and the files it names, tokenizer content, code version)."""
    config = parameters.get("curate_config") or {}
    decontaminate = (config.get("filters") or {}).get("decontaminate") or {}
    eval_file = decontaminate.get("file")
    return _key(
        "build",
        parameters["workspace"],
        sorted((i["ingest_id"], i["source_uri"]) for i in parameters["ingests"]),
        config_hash(config),
        content_sha256(eval_file) if eval_file and Path(eval_file).exists() else None,
        content_sha256(parameters["tokenizer"]),
    )


def refs_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """(dataset id, reference model content, precision; batch size-free: the values do not depend on it)."""
    return _key(
        "refs",
        parameters["workspace"],
        parameters["dataset_id"],
        content_sha256(parameters["model_path"]),
        parameters.get("dtype", "float32"),
    )


def train_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """(dataset id, starting point, training config, code version); see `start_key`."""
    return train_key(
        parameters["workspace"], parameters["dataset_id"], parameters["start_key"], parameters["config"]
    )


def train_key(workspace: str, dataset_id: str, start_key: str, config: Any) -> str:
    return _key("train", workspace, dataset_id, start_key, config_hash(config))


def start_key(model_path: str | Path, warm_start: bool, base_model: str | Path) -> str:
    """What a training run starts from, for its cache key.

    From the base model: the base model's content. Warm-started: "the latest model, rooted at this base",
    not the latest model's content; otherwise the run that produced the latest model would itself be
    out of date the next time (its output is now the latest model) and every refresh would retrain."""
    if warm_start:
        return f"warm:{content_sha256(base_model)}"
    return f"cold:{content_sha256(model_path)}"


# Task results stay valid for as long as their outputs exist; Prefect needs an expiration or none.
NEVER_EXPIRES: datetime.timedelta | None = None


def outputs_present(result: Any) -> bool:
    """True when every path a cached result names (keys ending in _path or _dir) still exists."""
    if isinstance(result, list):
        return all(outputs_present(item) for item in result)
    if not isinstance(result, dict):
        return True
    for key, value in result.items():
        if (key.endswith("_path") or key.endswith("_dir")) and value and not Path(value).exists():
            return False
    return True
