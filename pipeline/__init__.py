"""Pure data work: read, normalise, score, curate, tokenise, shard, catalog and SQL (no torch, no prefect)."""
