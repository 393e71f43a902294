"""Prefect flows: orchestration of aigc's plain-function steps (retries, caching, artifacts, logs)."""
