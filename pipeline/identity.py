"""Content identities: file versions, pair ids and config/version hashes.

Normalisation for pair ids (the text itself is stored exactly as given; only the hash input is
normalised): Unicode NFC, CRLF and CR to LF, surrounding whitespace stripped per text. Messages are
hashed as (role, content) in order. So the same pair read from a CRLF CSV and an LF JSONL file has
the same `pair_id`.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PAIR_ID_HEX = 32
_CHUNK = 1 << 20


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def pair_id(prompt: Iterable[Mapping[str, str]], chosen: str, rejected: str) -> str:
    """128-bit hex id of a pair from its normalised prompt messages, chosen and rejected."""
    digest = hashlib.sha256()
    for message in prompt:
        digest.update(b"\x1e" + message["role"].encode() + b"\x1f")
        digest.update(normalise_text(message["content"]).encode("utf-8", "surrogatepass"))
    digest.update(b"\x1dchosen\x1f" + normalise_text(chosen).encode("utf-8", "surrogatepass"))
    digest.update(b"\x1drejected\x1f" + normalise_text(rejected).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:PAIR_ID_HEX]


def prompt_key(prompt: Iterable[Mapping[str, str]]) -> str:
    """Hash of the normalised prompt alone (train/eval split, pairs-per-prompt limits)."""
    digest = hashlib.sha256()
    for message in prompt:
        digest.update(b"\x1e" + message["role"].encode() + b"\x1f")
        digest.update(normalise_text(message["content"]).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(folder: str | os.PathLike[str], known: Mapping[Path, str] | None = None) -> str:
    """Hash of a folder's files (relative names and bytes), e.g. a save_pretrained model folder.
    `known` maps some of its files to digests already taken (e.g. of the bytes just read by ingest),
    used instead of reading those files again."""
    folder = Path(folder)
    known = known or {}
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update((known.get(path) or file_sha256(path)).encode())
    return digest.hexdigest()


def stable_hash(value: Any, length: int = 16) -> str:
    """Hex hash of a JSON-able value with sorted keys: the same config gives the same id."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
