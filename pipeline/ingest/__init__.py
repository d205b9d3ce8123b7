"""Ingest: preference data in many formats to canonical, contract-checked `pairs` and `rejections`.

    readers.py   files, folders, save_to_disk folders and hub names -> raw records (streamed)
    detect.py    which format a file's records are in
    fields.py    text and message checks shared by the parsers (reason codes)
    formats.py   one parser per format: record -> candidate pairs or a rejection
    runner.py    ingest_source: write Parquet atomically, check conservation, record the catalog

See docs/ingest.md.
"""

from pipeline.ingest.formats import FORMATS
from pipeline.ingest.readers import IngestError, NotPreferenceData
from pipeline.ingest.runner import IngestOptions, IngestResult, ingest_source, latest_ingests

__all__ = [
    "FORMATS",
    "IngestError",
    "IngestOptions",
    "IngestResult",
    "NotPreferenceData",
    "ingest_source",
    "latest_ingests",
]
