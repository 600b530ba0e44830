"""The verifiable rewards (rest/rewards/verifiers.py): `math` compares final answers symbolically; `code` runs each
completion against its row's tests in the sandbox of rest/rewards/sandbox.py, and hostile code scores 0 within its
limits, leaving no process and no file behind, while the other rows are scored as usual."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from rest.config import RewardConfig, load_config
from rest.errors import RestError
from rest.rewards.components import score_config
from rest.rewards.sandbox import Limits, run_sandboxed
from rest.rewards.verifiers import parse_tests, solution_of
from rest.stages.preflight import check_run_inputs
from tests.conftest import CONFIG


def _math(completions: list[str], references: list[str]) -> list[float]:
    rc = RewardConfig(components={"math": 1.0})
    return score_config(rc, ["q"] * len(completions), completions, references)["reward_math"].tolist()


def test_math_compares_the_final_answer_symbolically():
    completions = [
        r"Half of it: \boxed{\frac{1}{2}}",  # boxed LaTeX vs a decimal
        "6 * 7 = 42\n#### 42\nCheck: 41 + 1",  # GSM8K: what follows ####, not the last number
        "So the answer is 7.",
        "First 12, then 13",  # the last number
        r"\boxed{2\sqrt{2}}",  # vs bare LaTeX in the reference
        "I do not know",
        "#### 41",
    ]
    references = ["0.5", "42", "7", "13", r"\sqrt{8}", "4", "42"]
    assert _math(completions, references) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_a_reference_without_an_answer_does_not_apply():
    got = _math(["#### 3", "#### 3"], ["3", "no number here"])
    assert got[0] == 1.0 and np.isnan(got[1])


def test_math_needs_references():
    with pytest.raises(RestError, match="`math` compares with the reference"):
        _math(["#### 3"], [None])


# ---------------------------------------------------------------------------------------------------------------
# code

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]


def _code(completions: list[str], tests: list, **code) -> np.ndarray:
    rc = RewardConfig(components={"code": 1.0}, code=code)
    n = len(completions)
    columns = {"source_id": [f"s{i}" for i in range(n)], "tests": tests}
    return score_config(rc, ["q"] * n, completions, [None] * n, columns=columns)["reward_code"]


@pytest.mark.integration  # a sandbox per row
def test_code_runs_the_tests_of_each_row_in_their_formats():
    good = "```python\ndef add(a, b):\n    return a + b\n```\nThat is all."
    half = "def add(a, b):\n    return 3"
    doubler = "print(int(input()) * 2)"
    tests = [
        ADD_TESTS,
        ADD_TESTS,
        [{"input": "3\n", "output": "6"}, {"input": "5\n", "output": "10\n"}],
        '{"inputs": ["2\\n"], "outputs": ["4"]}',  # APPS, as a JSON string
        "assert add(0, 0) == 0\nassert add(-1, 1) == 0",  # one string of asserts
        None,  # no tests: does not apply
    ]
    got = _code([good, half, doubler, doubler, good, good], tests)
    assert got[:5].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0] and np.isnan(got[5])
    assert _code([half], [ADD_TESTS], partial=True).tolist() == [0.5]


HOSTILE = {
    "infinite loop": "while True:\n    pass",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "10 GB": "x = bytearray(10 * 1024**3)\ndef add(a, b):\n    return a + b",
    "write outside": "open({outside!r}, 'w').write('x')\ndef add(a, b):\n    return a + b",
    "socket": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)\ndef add(a, b):\n    return a + b",
    "read /root": "open({secret!r}).read()\ndef add(a, b):\n    return a + b",
    "exit early": "import os\nos._exit(0)",  # ends before the asserts: not a pass
}


@pytest.fixture
def secret():
    path = Path("/root") / f"rest-secret-{os.getpid()}" if os.geteuid() == 0 else Path.home() / ".rest-secret"
    path.write_text("secret")
    path.chmod(0o600)
    yield path
    path.unlink()


@pytest.mark.integration  # seconds each: wall-clock kills
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_code_scores_zero_within_its_limits_and_leaves_nothing(case, tmp_path, secret):
    outside = tmp_path / "written-outside"
    hostile = HOSTILE[case].format(outside=str(outside), secret=str(secret))
    good = "def add(a, b):\n    return a + b"
    before = {p.pid for p in psutil.process_iter()}
    sandboxes = set(Path("/tmp").glob("rest-sandbox-*"))
    started = time.monotonic()
    got = _code([good, hostile, good + "\n"], [ADD_TESTS] * 3, wall_s=4.0, cpu_s=2)
    took = time.monotonic() - started
    assert got.tolist() == [1.0, 0.0, 1.0]  # the batch goes on around it
    assert took < 4.0 + 5.0, f"{case} took {took:.1f} s"
    assert not outside.exists()
    time.sleep(0.5)
    left = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid not in before and p.status() != "zombie"]
    left = [p for p in left if "harness.py" in " ".join(p.info["cmdline"] or []) or "unshare" in p.name()]
    assert not left, f"processes left behind: {left}"
    assert set(Path("/tmp").glob("rest-sandbox-*")) <= sandboxes  # its directory is gone


def test_the_sandbox_has_no_network_and_a_read_only_root():
    probe = (
        "import os, socket\n"
        "print(sorted(n for _, n in socket.if_nameindex()))\n"
        "try:\n    open('/etc/rest-probe', 'w')\nexcept OSError as e:\n    print(e.errno)\n"
        "open('here.txt', 'w').write('ok'); print(open('here.txt').read())\n"
    )
    result = run_sandboxed({"main.py": probe}, ["main.py"], Limits(wall_s=10))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split("\n")[:3] == ["['lo']", "30", "ok"]  # EROFS; its own directory works


def test_code_solution_and_tests_parsing():
    assert solution_of("Here:\n```py\nx = 1\n```\nand\n```\ny = 2\n```") == "x = 1\n"
    assert solution_of("x = 1") == "x = 1"
    assert parse_tests([]) is None and parse_tests("") is None
    assert parse_tests('["assert f() == 1"]') == [{"kind": "assert", "code": "assert f() == 1"}]
    with pytest.raises(RestError, match="a test must be an assert statement"):
        parse_tests([3])


def test_code_without_a_tests_column_is_refused_before_the_run(tmp_path):
    cfg = load_config(CONFIG, ["reward.components={code: 1.0}"])
    with pytest.raises(RestError, match=r"`code` reads column\(s\) tests, which data.valid .* lacks"):
        check_run_inputs(cfg)
