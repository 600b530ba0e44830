"""Prefect flows: orchestration only. Each task is a thin call into rest.stages and passes paths and names."""
