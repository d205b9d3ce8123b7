"""Orchestration: Prefect flows and tasks, lineage events, and the `dpop` CLI (no business logic)."""
