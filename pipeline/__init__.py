"""Shared code of the DVC stages: params, data, tracking, checkpoints, studies and the report."""
