"""A reward function by reference (rest/rewards/functions.py): called on batches with the rows' columns, None for
"does not apply", async allowed, and every mistake one line that names the function. End to end, `rest run` with a
function outside the repository and a pretrained reward model (rest/rewards/pretrained.py) side by side."""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rest import stages
from rest.config import RewardConfig, load_config
from rest.errors import RestError
from rest.rewards.components import score_config
from rest.rewards.functions import check_function_columns, code_identity
from tests.conftest import CONFIG, rest
from tests.helpers import Server, build_reward_checkpoint

SOURCES = ["1", "2", "3", "4"]
COMPLETIONS = ["eins", "zwei", "drei", "vierr"]
REFERENCES = ["eins", "zwei", "dreii", "vier"]
COLUMNS = {"source_id": ["a", "b", "c", "d"], "lang": ["de", "de", None, "de"]}


def _file(tmp_path: Path, body: str, name: str = "my_reward.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _score(path: Path, function: str, others: dict | None = None, columns=COLUMNS, **rc):
    reward = RewardConfig(components={**(others or {}), f"{path}:{function}": 1.0}, **rc)
    return score_config(reward, SOURCES, COMPLETIONS, REFERENCES, "cpu", columns)


def test_a_function_in_a_file_gets_the_batch_and_the_columns_it_names(tmp_path):
    path = _file(
        tmp_path,
        """
        calls = []
        def german(sources, completions, references, lang):
            calls.append(len(completions))
            ends = ("s", "i", "r")
            return [None if l is None else float(l == "de" and c.endswith(ends)) for c, l in zip(completions, lang)]
        """,
    )
    out = _score(path, "german", {"exact_match": 1.0})
    got = out["reward_german"]
    assert got[[0, 1, 3]].tolist() == [1.0, 1.0, 1.0] and np.isnan(got[2])
    # the total is the weighted mean of the components that apply: row 2 is exact_match's alone (0.0)
    assert out["reward"].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.5])


def test_async_functions_and_dotted_modules_work(tmp_path, monkeypatch):
    _file(
        tmp_path,
        """
        import asyncio
        async def judge(sources, completions, references, **columns):
            await asyncio.sleep(0.01)
            return [0.5 if columns["source_id"][i] != "d" else 1 for i in range(len(completions))]
        """,
        name="judges.py",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = score_config(RewardConfig(components={"judges:judge": 1.0}), SOURCES, COMPLETIONS, REFERENCES, "cpu", COLUMNS)
    assert out["reward_judge"].tolist() == [0.5, 0.5, 0.5, 1.0] and out["reward"].tolist() == [0.5, 0.5, 0.5, 1.0]


def test_repeated_rows_are_scored_once_but_rows_of_other_sources_are_not_merged(tmp_path):
    path = _file(
        tmp_path,
        """
        seen = []
        def f(sources, completions, references, source_id):
            seen.append(list(source_id))
            return [0.25] * len(completions)
        """,
    )
    reward = RewardConfig(components={f"{path}:f": 1.0})
    cols = {"source_id": ["a", "a", "b"]}
    score_config(reward, ["1", "1", "1"], ["x", "x", "x"], ["y", "y", "y"], "cpu", cols)
    from rest.rewards.functions import load_function

    module = __import__(load_function(f"{path}:f").__module__)
    assert module.seen == [["a", "b"]]  # a's repeat is copied, b (the same text, another source) is scored


def test_none_everywhere_gives_zero_and_the_shard_writer_stores_null(tmp_path):
    path = _file(tmp_path, "def never(s, c, r, **k):\n    return [None] * len(c)\n")
    out = _score(path, "never")
    assert out["reward"].tolist() == [0.0, 0.0, 0.0, 0.0] and np.isnan(out["reward_never"]).all()


@pytest.mark.parametrize(
    "body, function, match",
    [
        ("def f(s, c, r):\n    return [1.0] *\n", "f", r"importing .*my_reward.py failed: SyntaxError"),
        ("import not_a_module_anywhere\n", "f", r"failed: ModuleNotFoundError.*\(my_reward.py line 1\)"),
        ("def g(s, c, r):\n    return []\n", "f", r"has no `f` \(its functions: g\)"),
        ("f = 3\n", "f", r"`f` in .* is a int, not a function"),
        ("def f(s):\n    return []\n", "f", r"its signature f\(s\) cannot take a batch"),
        ("def f(s, c, r, tests):\n    return []\n", "f", r"reads column\(s\) tests, which these rows lacks"),
        (
            "def f(s, c, r, source_id):\n    x = {}\n    return [x['k'] for _ in c]\n",
            "f",
            r"`.*:f` raised KeyError: 'k' \(my_reward.py line 3\) on the batch of 4 rows starting at source_id a",
        ),
        ("def f(s, c, r):\n    return [0.5] * 3\n", "f", r"returned 3 values for 4 rows"),
        ("def f(s, c, r):\n    return {'x': 1}\n", "f", r"returned a dict; return one value per row"),
        ("def f(s, c, r):\n    return [0.5, float('nan'), 0.5, 0.5]\n", "f", r"returned NaN for source_id b \(row 1\)"),
        ("def f(s, c, r):\n    return [0.5, 0.5, 7, 0.5]\n", "f", r"returned 7 for source_id c \(row 2\).*rescale"),
        ("def f(s, c, r):\n    return ['1'] * 4\n", "f", r"returned '1' \(str\) for source_id a"),
    ],
    ids=[
        "syntax",
        "import",
        "missing",
        "not-callable",
        "signature",
        "column",
        "raises",
        "count",
        "dict",
        "nan",
        "range",
        "type",
    ],
)
def test_each_mistake_is_one_error_naming_the_function(tmp_path, body, function, match):
    path = _file(tmp_path, body)
    with pytest.raises(RestError, match=match) as info:
        _score(path, function)
    assert "\n" not in str(info.value)


def test_a_call_past_the_time_limit_is_an_error_within_the_limit(tmp_path):
    path = _file(tmp_path, "import time\ndef slow(s, c, r):\n    time.sleep(30)\n    return [1.0] * len(c)\n")
    started = time.monotonic()
    with pytest.raises(RestError, match=r"did not return within reward.timeout_s=0.5 s .* starting at source_id a"):
        _score(path, "slow", timeout_s=0.5)
    assert time.monotonic() - started < 5


def test_references_and_column_names_are_checked_with_the_config(tmp_path):
    with pytest.raises(RestError, match="not a function reference"):
        load_config(CONFIG, ["reward.components={my_reward.py:not-a-name: 1.0}"])
    with pytest.raises(RestError, match="would both write reward_f"):
        load_config(CONFIG, ["reward.components={a.py:f: 1.0, b.py:f: 1.0}"])
    with pytest.raises(RestError, match=r"missing.py does not exist"):
        code_identity(str(tmp_path / "missing.py") + ":f")
    with pytest.raises(RestError, match=r"no module not_a_module_anywhere"):
        code_identity("not_a_module_anywhere:f")
    path = _file(tmp_path, "def f(s, c, r, tests):\n    return [1.0] * len(c)\n")
    with pytest.raises(RestError, match=r"reads column\(s\) tests, which data.valid \(v.parquet\) lacks"):
        check_function_columns(f"{path}:f", ["source_id"], "data.valid (v.parquet)")


def test_an_edited_file_is_a_new_identity_and_is_imported_again(tmp_path):
    path = _file(tmp_path, "def f(s, c, r):\n    return [0.25] * len(c)\n")
    before = code_identity(f"{path}:f")
    assert _score(path, "f")["reward_f"].tolist() == [0.25] * 4
    path.write_text("def f(s, c, r):\n    return [0.75] * len(c)\n")
    after = code_identity(f"{path}:f")
    assert before["sha256"] != after["sha256"] and before["file"] == after["file"] == str(path.resolve())
    assert _score(path, "f")["reward_f"].tolist() == [0.75] * 4


# ---------------------------------------------------------------------------------------------------------------
# End to end: `rest run` with a function outside the repository that reads an extra column of the pool

FUNCTION = """
def parity(sources, completions, references, parity, source_id):
    # 1 when the completion's length has the row's parity; None for rows without one
    {fail}
    return [None if p is None else float(len(c) % 2 == p) for c, p in zip(completions, parity)]
"""


def _with_parity(src: str, dst: Path) -> Path:
    df = pd.read_parquet(src)
    df["parity"] = pd.array([None if i % 5 == 0 else i % 2 for i in range(len(df))], dtype="Int64")
    df.to_parquet(dst)
    return dst


@pytest.mark.integration
def test_rest_run_with_a_users_function_model_and_server_fails_one_line_resumes_and_tracks_the_code(tmp_path):
    home = tmp_path / "elsewhere"  # outside the repository
    home.mkdir()
    fn = home / "my_rewards.py"
    fn.write_text(FUNCTION.format(fail="if 'pool-00012' in source_id: raise ValueError('no parity for 12')"))
    pool = _with_parity("tests/fixtures/pool-small.parquet", home / "pool.parquet")
    valid = _with_parity("tests/fixtures/valid-small.parquet", home / "valid.parquet")
    rm = build_reward_checkpoint("bert", home / "reward-model")  # a pretrained sequence classifier, one output
    # a reward server on 127.0.0.1: exact match of the completion's length parity, from the `parity` column
    server = Server(
        lambda req: (
            200,
            {
                "rewards": [
                    None if p is None else float(len(c) % 2 != p)
                    for c, p in zip(req["completions"], req["columns"]["parity"])
                ]
            },
        )
    )
    run = tmp_path / "run"
    args = [
        "run",
        "--config",
        CONFIG,
        "--run",
        str(run),
        f"data.pool={pool}",
        f"data.valid={valid}",
        f"data.test={valid}",
        f"reward.components={{chrf: 1.0, {fn}:parity: 1.0, judge: 1.0, remote: 1.0}}",
        f"reward.models={{judge: {{model: {rm}, scale: 50.0}}}}",
        f"reward.servers={{remote: {{url: '{server.url}'}}}}",
        "improve.thresholds=[0.3]",
        "improve.steps=2",
        "bc.steps=20",
    ]
    failed = rest(*args, check=False)
    assert failed.returncode == 2, failed.stderr[-3000:]
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: reward function `{fn}:parity` raised ValueError: no parity for 12")
    assert "(my_rewards.py line 4) on the batch of 40 rows starting at source_id pool-00010" in line
    assert (run / "policy-0" / "_manifest.json").exists() and not (run / "grow-1" / "_manifest.json").exists()

    fn.write_text(FUNCTION.format(fail="pass"))  # the fix; the same command resumes
    done = rest(*args)
    assert "Test (" in done.stdout
    df = pd.read_parquet(run / "grow-1")
    assert df["parity"].isna().sum() == 8 * 8  # 8 sources without one, 8 samples each, kept in the shards
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("direct", fn)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    parity = [None if pd.isna(p) else int(p) for p in df["parity"]]
    want = module.parity(df["source"], df["completion"], df["reference"], parity, df["source_id"])
    got = df["reward_parity"].tolist()
    assert all((w is None and np.isnan(g)) or w == g for w, g in zip(want, got))
    rows = df.drop_duplicates("completion")
    direct = RewardConfig(models={"judge": {"model": str(rm), "scale": 50.0}}, components={"judge": 1.0})
    judged = score_config(direct, rows["source"].tolist(), rows["completion"].tolist(), [None] * len(rows))
    assert rows["reward_judge"].tolist() == pytest.approx(judged["reward_judge"].tolist(), abs=1e-6)
    assert df["reward_judge"].nunique() > 10  # the model tells completions apart
    # the server's answers: the opposite of the function's where it applies, null where it does not
    assert (df["reward_remote"].isna() == df["reward_parity"].isna()).all()
    assert np.allclose(df["reward_remote"].dropna(), 1 - df["reward_parity"].dropna())
    assert server.requests and all("parity" in r["columns"] for r in server.requests)
    applies = df["reward_parity"].notna()
    four = (df["reward_chrf"] + df["reward_parity"].fillna(0) + df["reward_judge"] + df["reward_remote"].fillna(0)) / 4
    total = np.where(applies, four, (df["reward_chrf"] + df["reward_judge"]) / 2)
    assert np.allclose(df["reward"], total)
    manifest = json.loads((run / "grow-1" / "_manifest.json").read_text())
    assert manifest["reward_code"][0]["function"] == f"{fn}:parity"
    assert manifest["config"]["reward_models"][0]["sha256"]  # the weights are in the step's key
    assert manifest["stats"]["components"]["parity"]["applies"] == pytest.approx(0.8)

    # The same rows scored by edited code (a comment: the same values) are another Grow step, with another id
    again = tmp_path / "again"
    shutil.copytree(run, again, ignore=shutil.ignore_patterns(".lock"))
    for name in ["grow-1", "improve-1-1"]:
        shutil.rmtree(again / name)
    fn.write_text(FUNCTION.format(fail="# edited"))
    with pytest.raises(RestError, match="made with another config"):
        stages.plan_grow(run, 1)  # the published step of the old code is not reused
    for index in stages.plan_grow(again, 1):
        stages.grow_shard(again, 1, index)
    stages.finish_grow(again, 1)
    edited = json.loads((again / "grow-1" / "_manifest.json").read_text())
    assert pd.read_parquet(again / "grow-1").equals(df)
    assert edited["id"] != manifest["id"]
    server.stop()
