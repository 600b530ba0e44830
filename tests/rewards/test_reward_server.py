"""A reward behind HTTP (rest/rewards/remote.py), against real servers on 127.0.0.1: `rest reward serve`, servers
that are slow, failing, wrong or down, and one that dies in the middle of a Grow step."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rest import stages
from rest.config import RewardConfig, load_config
from rest.errors import RestError
from rest.rewards.components import score_config
from rest.rewards.metrics import chrf
from tests.conftest import CONFIG
from tests.helpers import Server

SOURCES = ["1", "2", "3", "4"]
COMPLETIONS = ["eins", "zwo", "drei", "fier"]
REFERENCES = ["eins", "zwei", "drei", "vier"]


def _chrf(req):
    return 200, {"rewards": chrf(req["sources"], req["completions"], req["references"]).tolist()}


def _reward(url: str, **server) -> RewardConfig:
    return RewardConfig(components={"judge": 1.0}, servers={"judge": {"url": url, **server}})


def _score(rc: RewardConfig):
    columns = {"source_id": ["a", "b", "c", "d"]}
    return score_config(rc, SOURCES, COMPLETIONS, REFERENCES, "cpu", columns)


@pytest.mark.integration  # the CLI in a subprocess
def test_rest_reward_serve_answers_what_the_reward_scores_here(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "rest.cli", "reward", "serve", "--config", CONFIG, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "serving reward" in line and "on http://127.0.0.1:" in line, line
        url = line.split(" on ")[1].split()[0] + "score"
        remote = _score(_reward(url, batch_size=3))  # two requests
        local = _score(load_config(CONFIG).reward)
        assert remote["reward_judge"].tolist() == pytest.approx(local["reward"].tolist())
        assert remote["reward"].tolist() == pytest.approx(local["reward"].tolist())
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_request_carries_the_batch_and_its_columns():
    server = Server(_chrf)
    try:
        out = _score(_reward(server.url))
        [req] = server.requests
        assert req["completions"] == COMPLETIONS and req["columns"]["source_id"] == ["a", "b", "c", "d"]
        assert out["reward_judge"].tolist() == pytest.approx(chrf(SOURCES, COMPLETIONS, REFERENCES).tolist())
    finally:
        server.stop()


@pytest.mark.integration  # three time-outs and the back-off: ~5 s
def test_a_slow_server_is_retried_then_named_with_what_went_wrong():
    server = Server(lambda req: (time.sleep(3), _chrf(req))[1])
    try:
        started = time.monotonic()
        with pytest.raises(RestError, match=r"`judge` at .* did not answer within timeout_s=0.3 s \(tried 3 time"):
            _score(_reward(server.url, timeout_s=0.3, retries=2))
        assert len(server.requests) == 3
        assert time.monotonic() - started < 0.3 * 3 + 1 + 2 + 2  # three time-outs and the back-off (1 s, 2 s)
    finally:
        server.stop()


def test_a_failing_answer_is_retried_and_a_wrong_request_is_not():
    calls = []

    def flaky(req):
        calls.append(1)
        return (503, {"error": "warming up"}) if len(calls) == 1 else _chrf(req)

    server = Server(flaky)
    try:
        assert _score(_reward(server.url, retries=1))["reward_judge"][0] == 1.0 and len(calls) == 2
    finally:
        server.stop()
    server = Server(lambda req: (400, {"error": "no such model"}))
    try:
        with pytest.raises(RestError, match=r"answered HTTP 400: .*no such model.*\(tried 1 time"):
            _score(_reward(server.url, retries=3))
    finally:
        server.stop()


@pytest.mark.parametrize(
    "body, match",
    [
        ({"rewards": [0.5, 0.5, 0.5]}, r"returned 3 values for 4 rows"),
        ({"rewards": [0.5, 2.0, 0.5, 0.5]}, r"returned 2.0 for source_id b"),
        ({"scores": [1, 1, 1, 1]}, r'the protocol is \{"rewards"'),
        (b"<html>oops</html>", r"answered something that is not JSON"),
    ],
    ids=["count", "range", "protocol", "not-json"],
)
def test_a_wrong_answer_is_one_error(body, match):
    server = Server(lambda req: (200, body))
    try:
        with pytest.raises(RestError, match=match):
            _score(_reward(server.url))
    finally:
        server.stop()


def test_a_server_that_is_down_is_named():
    server = Server(_chrf)
    url = server.url
    server.stop()  # nothing listens on its port now
    with pytest.raises(RestError, match=r"`judge` at .* is down or unreachable .*tried 2 time.*start it"):
        _score(_reward(url, retries=1))


@pytest.mark.integration
def test_a_server_killed_mid_grow_fails_the_shard_and_the_resumed_step_equals_an_uninterrupted_one(tmp_path):
    server = Server(_chrf)
    port = server.httpd.server_address[1]
    overrides = [
        "bc.steps=20",
        f"reward.servers={{judge: {{url: '{server.url}', timeout_s: 5, retries: 0}}}}",
        "reward.components={judge: 1.0}",
    ]
    cfg = load_config(CONFIG, overrides)
    run = tmp_path / "run"
    stages.start_run(run, cfg)
    stages.make_policy0(run)  # validation scores through the server too
    clean = tmp_path / "clean"
    shutil.copytree(run, clean, ignore=shutil.ignore_patterns(".lock"))

    todo = stages.plan_grow(run, 1)
    assert len(todo) == 8
    for index in todo[:3]:
        stages.grow_shard(run, 1, index)
    server.stop()  # killed mid-Grow
    with pytest.raises(RestError, match=r"reward server `judge` .* is down or unreachable"):
        stages.grow_shard(run, 1, todo[3])
    grow = run / "grow-1"
    assert not (grow / "shard-00003.parquet").exists() and not (grow / "_shard-00003.json").exists()
    assert not (grow / "_manifest.json").exists() and not list(grow.glob("*.tmp*"))

    server = Server(_chrf, port=port)  # restarted on the same address
    try:
        assert stages.plan_grow(run, 1) == todo[3:]  # the three finished shards are kept
        for index in todo[3:]:
            stages.grow_shard(run, 1, index)
        stages.finish_grow(run, 1)
        for index in stages.plan_grow(clean, 1):
            stages.grow_shard(clean, 1, index)
        stages.finish_grow(clean, 1)
    finally:
        server.stop()
    resumed, uninterrupted = pd.read_parquet(run / "grow-1"), pd.read_parquet(clean / "grow-1")
    assert resumed.equals(uninterrupted) and resumed["reward_judge"].notna().all()
    ids = [json.loads((d / "grow-1" / "_manifest.json").read_text())["id"] for d in (run, clean)]
    assert ids[0] == ids[1]
    assert Path(run / "grow-1").is_dir()
