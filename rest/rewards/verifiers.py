"""Verifiable rewards, ReST-EM's binary correctness: `math` (the final answer against the reference, compared
symbolically) and `code` (the completion run against the row's tests in a sandbox). Both score 0 or 1.

    reward: {components: {math: 1.0}}                        # GSM8K / MATH: the reference is the answer
    reward: {components: {code: 1.0}, code: {partial: true}}  # the share of the row's `tests` that pass

`math`: the answer is what follows `####` (GSM8K) when there is one, else what math-verify extracts from the
completion (`\\boxed{...}`, "the answer is ...", a LaTeX or plain expression, the last number); the reference is
parsed the same way (wrapped in `$...$` when it is bare LaTeX). math-verify (Hugging Face's, the parser TRL and
open-r1 use) compares them as sympy expressions: 1/2, 0.5 and \\frac{1}{2} are equal. It runs in a helper process
(its time limits use SIGALRM, which only a main thread has), one row at a time under a wall-clock limit: a row that
hangs sympy scores 0 and the rest go on. A reference math-verify cannot parse does not apply (None).

`code`: the completion's first fenced block (```python ... ```), or the whole completion, runs against the row's
`tests` column: a list of assert statements (or one string of them), a list of {"input", "output"} pairs, or
{"inputs": [...], "outputs": [...]} (APPS), also as a JSON string. Each test is its own process in the sandbox of
rest/rewards/sandbox.py (no network, read-only file system, limits, a wall-clock kill); an assert test passes when
its script runs to the end, an input/output test when stdout matches (surrounding whitespace aside). 1 when all
pass (`code.partial`: the share that pass); a row without tests does not apply.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import selectors
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rest.errors import RestError
from rest.rewards.metrics import need_references
from rest.rewards.sandbox import Limits, check_sandbox, run_sandboxed
from rest.rewards.scorer import Scorer

# ---------------------------------------------------------------------------------------------------------------
# math

MATH_ROW_S = 20.0  # wall-clock limit per row in the helper (math-verify's own limits are 5 s to parse and compare)
MATH_START_S = 120.0  # the helper's imports (sympy, math-verify)
_GSM8K = re.compile(r"####\s*([^\n]+)")
_MATH_WORKER = (
    "import sys; data = sys.stdin.buffer.read(); from rest.rewards.verifiers import serve_math; serve_math(data)"
)


def _parse_answer(parse, text: str) -> list:
    found = parse(text)
    if not found and "$" not in text and "\\" in text:  # bare LaTeX such as \frac{1}{2}
        found = parse(f"${text}$")
    return found


def math_score(completion: str, reference: str) -> float:
    """1.0 when the completion's final answer equals the reference's, 0.0 when not, NaN when the reference has no
    answer math-verify can read. Imports math-verify: call it in a main thread (serve_math does)."""
    from math_verify import parse, verify

    gold = _parse_answer(parse, reference)
    if not gold:
        return float("nan")
    marked = _GSM8K.search(completion)
    answer = _parse_answer(parse, marked.group(1).strip() if marked else completion)
    return 1.0 if answer and verify(gold, answer) else 0.0


def serve_math(data: bytes) -> None:
    """The helper process: "ready", then one score per row of the pickled [(completion, reference), ...]."""
    import logging

    logging.disable(logging.WARNING)  # math-verify logs every unparsable answer
    import math_verify  # noqa: F401  (the imports count against MATH_START_S, not against the first row)

    rows = pickle.loads(data)
    print("ready", flush=True)
    for completion, reference in rows:
        try:
            value = math_score(completion, reference)
        except Exception:  # math-verify raises on some inputs despite raise_on_error=False
            value = 0.0
        print(repr(value), flush=True)


def _math_rows(rows: list[tuple[str, str]]) -> np.ndarray:
    """Score rows in a helper process; a row past MATH_ROW_S kills it, scores 0, and a new helper goes on."""
    out = np.zeros(len(rows), dtype=np.float64)
    start = 0
    while start < len(rows):
        done = _math_helper(rows[start:], out[start:])
        start += done + 1 if done < len(rows) - start else done  # the row it hung on scores 0
    return out


def _math_helper(rows: list[tuple[str, str]], out: np.ndarray) -> int:
    """Rows scored before the helper finished or was stopped."""
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-c", _MATH_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
    )
    assert proc.stdin is not None and proc.stdout is not None  # both are pipes
    stdout = proc.stdout
    try:
        proc.stdin.write(pickle.dumps(rows))
        proc.stdin.close()
        selector = selectors.DefaultSelector()
        selector.register(stdout, selectors.EVENT_READ)
        done, ready, buffer = 0, False, b""
        while done < len(rows):
            if not selector.select(MATH_ROW_S if ready else MATH_START_S):
                if not ready:
                    raise RestError(f"the `math` reward's helper did not start within {MATH_START_S:.0f} s")
                return done  # this row hangs: stop the helper
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                proc.wait()
                err.seek(0)
                tail = err.read().decode(errors="replace")[-1500:]
                raise RestError(f"the `math` reward's helper ended with exit code {proc.returncode}: {tail}")
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line == b"ready":
                    ready = True
                else:
                    out[done] = float(line)
                    done += 1
        return done
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err.close()


def math_scorer(name: str, rc, device: str) -> Scorer:
    """The `math` component: 1 when the completion's final answer equals the reference, else 0."""
    try:
        import math_verify  # noqa: F401
    except ImportError:
        raise RestError(
            "the `math` reward needs math-verify: pip install 'math-verify==0.8.0' (it is in rest's dependencies)"
        ) from None

    def scored(sources: Sequence[str], completions: Sequence[str], references: Sequence[str | None]) -> np.ndarray:
        refs = need_references("math", references)
        return _math_rows(list(zip(completions, refs)))

    return Scorer(scored)


# ---------------------------------------------------------------------------------------------------------------
# code

_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)```", re.DOTALL)

# The trusted harness: runs inside the sandbox, each test as its own process, and prints its count last.
_HARNESS = r"""
import json, subprocess, sys
job = json.loads(sys.stdin.read())
passed = 0
for test in job["tests"]:
    try:
        if test["kind"] == "assert":
            script = job["solution"] + "\n\n" + test["code"] + "\nprint(" + repr(job["nonce"]) + ")\n"
            p = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, timeout=job["test_s"])
            ok = p.returncode == 0 and p.stdout.decode(errors="replace").rstrip().endswith(job["nonce"])
        else:
            p = subprocess.run([sys.executable, "-I", "-c", job["solution"]], input=test["input"].encode(),
                               capture_output=True, timeout=job["test_s"])
            ok = p.returncode == 0 and p.stdout.decode(errors="replace").strip() == test["output"].strip()
    except Exception:
        ok = False
    passed += ok
print(job["nonce"], json.dumps({"passed": passed, "total": len(job["tests"])}))
"""


def solution_of(completion: str) -> str:
    """The code of a completion: its first fenced block, else all of it."""
    fenced = _FENCE.search(completion)
    return fenced.group(1) if fenced else completion


def parse_tests(tests: Any) -> list[dict[str, str]] | None:
    """A row's `tests` as [{"kind": "assert", "code"} | {"kind": "io", "input", "output"}]; None when it has none."""
    if tests is None:
        return None
    if isinstance(tests, str):
        try:
            loaded = json.loads(tests)
        except json.JSONDecodeError:
            return [{"kind": "assert", "code": tests}] if tests.strip() else None
        if isinstance(loaded, (list, dict)):
            tests = loaded
        else:
            return [{"kind": "assert", "code": tests}]
    if isinstance(tests, Mapping) and "inputs" in tests and "outputs" in tests:
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, np.ndarray):
        tests = tests.tolist()
    if not isinstance(tests, (list, tuple)) or not tests:
        return None
    out = []
    for test in tests:
        if isinstance(test, str):
            out.append({"kind": "assert", "code": test})
        elif isinstance(test, Mapping) and "input" in test and "output" in test:
            out.append({"kind": "io", "input": str(test["input"]), "output": str(test["output"])})
        else:
            raise RestError(
                f"the `code` reward: a test must be an assert statement (text) or an {{input, output}} pair, got "
                f"{str(test)[:80]!r}"
            )
    return out


def run_tests(solution: str, tests: list[dict[str, str]], limits: Limits) -> tuple[int, int]:
    """(passed, total) of `tests` against `solution`, in one sandbox; (0, total) if the sandbox is killed."""
    nonce = secrets.token_hex(16)
    job = {"solution": solution, "tests": tests, "nonce": nonce, "test_s": limits.cpu_s + 1}
    result = run_sandboxed({"harness.py": _HARNESS}, ["harness.py"], limits, json.dumps(job).encode())
    for line in reversed(result.stdout.decode(errors="replace").splitlines()):
        if line.startswith(nonce + " "):
            counts = json.loads(line[len(nonce) + 1 :])
            return int(counts["passed"]), int(counts["total"])
    return 0, len(tests)


def code_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def code_scorer(name: str, rc, device: str) -> Scorer:
    """The `code` component: 1 when the completion passes all of its row's tests (code.partial: the share)."""
    check_sandbox()
    cc = rc.code
    limits = Limits(
        wall_s=cc.wall_s,
        cpu_s=cc.cpu_s,
        memory_mb=cc.memory_mb,
        processes=cc.processes,
        file_size_mb=cc.file_size_mb,
    )

    def scored(sources, completions, references, columns: Mapping[str, Sequence] | None = None) -> np.ndarray:
        if not columns or "tests" not in columns:
            raise RestError(
                "the `code` reward runs each completion against its row's `tests` column, which these rows lack: add "
                "it to the data (asserts, or input/output pairs)"
            )
        jobs = [parse_tests(t) for t in columns["tests"]]

        def one(i: int) -> float:
            tests = jobs[i]
            if tests is None:
                return float("nan")
            passed, total = run_tests(solution_of(completions[i]), tests, limits)
            return passed / total if cc.partial else float(passed == total)

        with ThreadPoolExecutor(max_workers=cc.workers or code_workers()) as pool:
            return np.array(list(pool.map(one, range(len(completions)))), dtype=np.float64)

    return Scorer(scored, takes_columns=True)


def check_code(name: str, rc, scored) -> None:
    """The `code` component's check before a run: the sandbox works on this machine."""
    check_sandbox()
