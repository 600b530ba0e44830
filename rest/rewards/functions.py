"""A reward function by reference: a component named `module:function` or `path/to/file.py:function`.

    # my_rewards.py, anywhere (a relative path starts at the current directory, as data paths do)
    def short(sources, completions, references, **columns):
        return [1.0 if len(c) < 80 else 0.0 for c in completions]

    reward:
      components: {chrf: 1.0, "my_rewards.py:short": 1.0}    # writes reward_chrf and reward_short

The function is called once per batch (a Grow shard's distinct rows, an evaluation split) with lists:
`fn(sources, completions, references, **columns)`, where `columns` are the other columns of the rows (`source_id`
and every extra column of the data; `references` holds None where a row has none). It gets the columns it names as
parameters, or all of them with `**columns`. It returns one value per row: a number in [0, 1], or None for "does
not apply" (the row's total is then the weighted mean of the components that do apply; a row none applies to gets
0). `async def` works. A call that runs past `reward.timeout_s` is an error.

Lineage: the reference and the sha256 of the file that defines the function are part of the Grow step's key (and
of its `reward_code.json`), so editing the file never reuses shards scored by the old code, and gives a new id.

Everything the user can get wrong is a RestError that names the function: an import that fails, a missing
function, a signature that cannot take the batch, an exception inside it (with its line and the batch's first
source_id), a wrong number of values, NaN, a value outside [0, 1].
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rest.config.components import is_function_reference
from rest.errors import RestError
from rest.rewards.scorer import Scorer

FIX = "fix it and run the same command again (finished shards are kept)"


def split_reference(name: str) -> tuple[str, str]:
    """`path/to/file.py:function` or `package.module:function` -> (target, function)."""
    target, _, function = name.rpartition(":")
    return target, function


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target


def _where(name: str) -> Path:
    """The file that defines the function's module (not imported for a path; found, not run, for a module)."""
    target, _ = split_reference(name)
    if _is_path(target):
        path = Path(target)
        if not path.is_file():
            raise RestError(
                f"reward.components: `{name}`: {target} does not exist; fix the path (relative paths start at the "
                "current directory)"
            )
        return path.resolve()
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError) as exc:
        spec = None
        reason = f" ({type(exc).__name__}: {exc})"
    else:
        reason = ""
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise RestError(
            f"reward.components: `{name}`: no module {target} on the Python path{reason}; install it, or name the "
            "file instead (path/to/file.py:function)"
        )
    return Path(spec.origin).resolve()


def code_identity(name: str) -> dict[str, str]:
    """What a Grow step's key records of a function component: the reference, its file and the file's sha256."""
    path = _where(name)
    return {"function": name, "file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


LOADED: dict[tuple[str, str], Callable] = {}


def _user_frame(exc: BaseException, path: Path) -> str:
    """` (file.py line N)`: the deepest line of the user's file in the traceback, if any."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path]
    return f" ({path.name} line {frames[-1].lineno})" if frames else ""


def load_function(name: str) -> Callable:
    """The function a component names, imported once per file content (an edited file is imported again)."""
    identity = code_identity(name)
    key = (name, identity["sha256"])
    if key in LOADED:
        return LOADED[key]
    target, function = split_reference(name)
    path = Path(identity["file"])
    try:
        if _is_path(target):
            module_name = f"rest_reward_{path.stem}_{identity['sha256'][:12]}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # pickling and dataclasses look the module up by name
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except Exception as exc:
        raise RestError(
            f"reward.components: `{name}`: importing {path} failed: {type(exc).__name__}: {exc}"
            f"{_user_frame(exc, path)}; {FIX}"
        ) from None
    fn = getattr(module, function, None)
    if fn is None:
        defined = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and not k.startswith("_"))
        raise RestError(
            f"reward.components: `{name}`: {path} has no `{function}`"
            f"{' (its functions: ' + ', '.join(defined) + ')' if defined else ''}"
        )
    if not callable(fn):
        raise RestError(f"reward.components: `{name}`: `{function}` in {path} is a {type(fn).__name__}, not a function")
    LOADED[key] = fn
    return fn


def _missing_columns(fn: Callable, available: Sequence[str]) -> list[str]:
    """The parameters after the first three that `fn` requires (no default) and that are not among the columns."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = [p.name for p in params[3:] if p.kind in named and p.default is inspect.Parameter.empty]
    return [p for p in required if p not in available]


def check_function_columns(name: str, available: Sequence[str], where: str, fn: Callable | None = None) -> None:
    """RestError unless every column function `name` (`fn`, when it is loaded already) requires is one of
    `available` (the columns of `where`, a split it will score): said before a run writes anything."""
    missing = _missing_columns(fn if fn is not None else load_function(name), available)
    if missing:
        raise RestError(
            f"reward function `{name}` reads column(s) {', '.join(missing)}, which {where} lacks (its columns: "
            f"{', '.join(available)}); add them to that split, or give the parameter a default "
            f"({missing[0]}=None) and handle rows without it"
        )


def _wanted_columns(name: str, fn: Callable, columns: Mapping[str, Sequence]) -> dict[str, Sequence]:
    """The columns `fn` takes: all with **kwargs, else those it names; a signature that cannot take the batch is
    named with what it must look like."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable: give it everything
        return dict(columns)
    check_function_columns(name, list(columns), "these rows", fn)  # fn is loaded: no second import or hash
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        wanted = dict(columns)
    else:
        wanted = {k: v for k, v in columns.items() if k in params}
    try:
        inspect.signature(fn).bind([], [], [], **wanted)
    except TypeError as exc:
        signature = f"{getattr(fn, '__name__', name)}{inspect.signature(fn)}"
        raise RestError(
            f"reward function `{name}`: its signature {signature} cannot take a batch ({exc}); write it as "
            f"def {getattr(fn, '__name__', 'fn')}(sources, completions, references, **columns), where columns are "
            f"{', '.join(columns) or 'none here'}"
        ) from None
    return wanted


def _call(fn: Callable, args: tuple, kwargs: dict, timeout_s: float | None) -> Any:
    """fn(*args, **kwargs), awaited if it is a coroutine function, in a helper thread when there is a time limit
    (a daemon: a call that never returns cannot hold the process at exit). TimeoutError past `timeout_s`."""

    def run() -> Any:
        if inspect.iscoroutinefunction(fn):
            return asyncio.run(fn(*args, **kwargs))
        out = fn(*args, **kwargs)
        return asyncio.run(out) if inspect.iscoroutine(out) else out

    if timeout_s is None and not inspect.iscoroutinefunction(fn):
        return run()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = run()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="reward-function", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_values(name: str, values: Any, n: int, ids: Sequence[str]) -> np.ndarray:
    """One float per row, NaN for None ("does not apply"); anything else is named with its row's source_id."""
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise RestError(
            f"reward function `{name}` returned a {type(values).__name__}; return one value per row (a list of {n} "
            "numbers in [0, 1], None where it does not apply)"
        )
    values = list(values.tolist() if isinstance(values, np.ndarray) else values)
    if len(values) != n:
        raise RestError(f"reward function `{name}` returned {len(values)} values for {n} rows; return one per row")
    out = np.empty(n, dtype=np.float64)
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.nan
            continue
        if isinstance(v, np.generic):
            v = v.item()
        if not isinstance(v, (int, float)):
            raise RestError(
                f"reward function `{name}` returned {v!r} ({type(v).__name__}) for source_id {ids[i]} (row {i}); "
                "return a number in [0, 1], or None where it does not apply"
            )
        if math.isnan(v):
            raise RestError(
                f"reward function `{name}` returned NaN for source_id {ids[i]} (row {i}); return None where it does "
                "not apply"
            )
        if not 0.0 <= v <= 1.0:
            raise RestError(
                f"reward function `{name}` returned {v} for source_id {ids[i]} (row {i}); a reward is in [0, 1]: "
                "rescale it (e.g. min(1.0, max(0.0, x / 10)))"
            )
        out[i] = float(v)
    return out


def function_scorer(name: str, rc, device: str) -> Scorer:
    """The scorer of function component `name` (see the module docstring)."""
    fn = load_function(name)
    timeout_s = rc.timeout_s

    def scored(sources, completions, references, columns: Mapping[str, Sequence] | None = None) -> np.ndarray:
        columns = dict(columns or {})
        ids = [str(i) for i in columns.get("source_id", range(len(completions)))]
        kwargs = _wanted_columns(name, fn, columns)
        args = (list(sources), list(completions), list(references))
        try:
            values = _call(fn, args, {k: list(v) for k, v in kwargs.items()}, timeout_s)
        except TimeoutError:
            raise RestError(
                f"reward function `{name}` did not return within reward.timeout_s={timeout_s} s on the batch of "
                f"{len(completions)} rows starting at source_id {ids[0] if ids else '-'}; make it faster or raise "
                "reward.timeout_s"
            ) from None
        except RestError:
            raise
        except Exception as exc:
            path = Path(code_identity(name)["file"])
            raise RestError(
                f"reward function `{name}` raised {type(exc).__name__}: {exc}{_user_frame(exc, path)} on the batch "
                f"of {len(completions)} rows starting at source_id {ids[0] if ids else '-'}; {FIX}"
            ) from None
        return check_values(name, values, len(completions), ids)

    return Scorer(scored, takes_columns=True)


def function_identity(name: str, rc) -> dict[str, str]:
    """The `function` kind's identity (code_identity): the key keeps the reference and sha256, the manifest the
    file too."""
    return code_identity(name)


def check_function_component(name: str, rc, scored: Mapping[str, Sequence[str]]) -> None:
    """The `function` kind's check before a run: it imports and finds the columns it requires in every split it
    scores (`scored`: {where: its columns})."""
    for where, available in scored.items():
        check_function_columns(name, available, where)


__all__ = [
    "check_function_columns",
    "check_function_component",
    "code_identity",
    "function_identity",
    "function_scorer",
    "is_function_reference",
    "load_function",
    "split_reference",
]
