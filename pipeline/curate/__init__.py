"""Curation: config, filters with reason codes, decontamination and the train/eval split."""

from pipeline.curate.config import ConfigError, CurationConfig, load_curation_config

__all__ = ["ConfigError", "CurationConfig", "load_curation_config"]
