"""Ingest: preference data in many formats to canonical, contract-checked `pairs` and `rejections`.

    readers.py   files, folders, save_to_disk folders and hub names -> raw records (streamed)
    detect.py    which format a file's records are in
    fields.py    text and message checks shared by the parsers (reason codes)
    formats.py   one parser per format: record -> candidate pairs or a rejection
    stage.py     IngestStage: one source to pairs and rejections Parquet, conservation checked
    runner.py    ingest_source (files, folders, hub names) on the stage runner; latest ingests

See docs/ingest.md.
"""

from pipeline.ingest.formats import FORMATS
from pipeline.ingest.readers import IngestError, NotPreferenceData
from pipeline.ingest.runner import IngestResult, ingest_source, latest_ingests
from pipeline.ingest.stage import IngestOptions, IngestStage

__all__ = [
    "FORMATS",
    "IngestError",
    "IngestOptions",
    "IngestResult",
    "IngestStage",
    "NotPreferenceData",
    "ingest_source",
    "latest_ingests",
]
