"""Backends for tests that run in other processes (Prefect workers): named as ``tests.plugins.MODULE:CLASS``."""
