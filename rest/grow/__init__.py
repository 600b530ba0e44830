"""Grow engines: what samples completions from a policy (engines: the registry and per-process cache; base: the
protocol; engine_torch, engine_vllm: one file per engine; vllm_worker: the process vLLM runs in).
"""
