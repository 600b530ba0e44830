"""The `grow` section: N samples per source from the current policy, and how the vllm engine runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rest.config.base import IN_NO_KEY, Section


class VllmConfig(Section):
    """How `grow.engine: vllm` runs: vLLM in a process of its own (rest/grow/vllm_worker.py), started once and kept
    for every shard and evaluation in the process, each new policy's weights loaded into it. None of it changes a
    sample: it is in no artifact's key."""

    python: str | None = Field(
        None,
        description="the Python interpreter that has vllm installed (vLLM pins its own transformers and fastapi, so "
        "it may live in a venv of its own); null: $REST_VLLM_PYTHON when set, else the pipeline's own interpreter",
    )
    gpu_memory_utilization: float = Field(
        0.5,
        gt=0,
        le=1,
        description="the share of the GPU's memory vLLM takes for weights and KV cache; the rest is left for "
        "training and reward models in the same process (ignored on CPU, where VLLM_CPU_KVCACHE_SPACE, in GiB, "
        "sets the KV cache: 1 unless you set it)",
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="longest prompt + completion, in tokens; null: the model's own limit (vLLM sizes "
        "its KV cache by it: set it for models with long contexts)",
    )
    enforce_eager: bool = Field(
        False,
        description="no CUDA graphs / compiled kernels: starts faster, samples slower; for tests and tiny models",
    )
    start_timeout: int = Field(
        1200,
        ge=10,
        description="seconds vLLM may take to start (load the weights, profile memory, compile and capture CUDA "
        "graphs); past them its process is ended and the step fails with its last output, instead of hanging",
    )
    batch_invariant: bool = Field(
        True,
        description="on a GPU, vLLM's batch-invariant kernels (VLLM_BATCH_INVARIANT=1; compute capability >= 8.0): "
        "a request's floats do not depend on what else is batched with it, so a shard regenerates the same; "
        "false: faster kernels, and a regenerated shard may differ in samples that were near-ties",
    )
    warm: bool = Field(
        True,
        description="keep the vLLM process from one policy to the next and load each new policy's weights into it "
        "(vLLM's reload_weights; on a GPU it sleeps while the pipeline trains); false: a new process per policy "
        "(20-50 s each on a CPU). A policy of another architecture or tokenizer always gets a new process",
    )


class GrowConfig(Section):
    """Grow: N samples per source from the current policy, scored and written as Parquet shards."""

    steps: int = Field(2, json_schema_extra=IN_NO_KEY, ge=0, description="G, the number of Grow steps of `rest run`")
    num_samples: int = Field(8, ge=1, description="N samples per source")
    temperature: float = Field(1.0, gt=0, description="sampling temperature; 1.0 samples the policy itself")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1.0 turns it off")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens; 0 turns it off")
    max_new_tokens: int = Field(48, ge=1, description="longest completion, in tokens")
    batch_size: int = Field(256, ge=1, description="sequences decoded together (sources x samples)")
    shard_size: int = Field(250, ge=1, description="sources per shard; a shard is the unit of work and of resume")
    sources_per_step: int | None = Field(
        None,
        ge=1,
        description="a fresh 'superbatch' of this many sources per Grow step (SuperHF): step g takes the next slice "
        "of a seeded shuffle of the Grow sources, reshuffled each time they are used up; "
        "null: every source, every step",
    )
    workers: int = Field(
        1,
        json_schema_extra=IN_NO_KEY,
        ge=1,
        description="shards sampled at once (threads); on CPU torch already uses every core",
    )
    engine: Literal["torch", "vllm"] = Field(
        "torch",
        description="what samples: torch (our batched decoding loop on the transformers model) or vllm "
        "(decoder-only policies; `grow.vllm` says how it runs); rest/grow/engines.py. Part of the Grow step's key, so "
        "shards of two engines never mix. Sampling a policy-0 or a published policy for `rest eval` and best-of-N "
        "uses it too; a policy just trained is validated with torch",
    )
    vllm: VllmConfig = Field(
        json_schema_extra=IN_NO_KEY, default_factory=lambda: VllmConfig(), description="how the vllm engine runs"
    )
