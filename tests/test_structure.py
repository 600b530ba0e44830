"""The shape of the code: imports run one way (between modules, and between the rooms of rest/), no private names
cross modules, only the flows and the CLI import Prefect, and the repository stands on its own (no references to
files outside it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rest",)
# The rooms of rest/, from the bottom up: a module may import from its own room and the rooms below it, never above.
# `base` is rest/__init__.py, errors.py and environment.py.
ROOMS = [
    "base",
    "config",
    "artifacts",
    "data",
    "models",
    "training",
    "improve",
    "rewards",
    "grow",
    "evaluation",
    "reporting",
    "stages",
    "flows",
    "cli",
]


def _modules() -> dict[str, Path]:
    """Every module of rest/, at any depth (a subpackage is its __init__.py)."""
    out = {}
    for path in sorted((REPO / "rest").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "base"


def _imports(path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every import of our own modules, at any depth (inside functions too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    out.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:  # `from rest import stages` imports the module rest.stages
                    out.append((sub, [], node.lineno))
                else:
                    out.append((node.module, [alias.name], node.lineno))
    return out


def test_imports_form_no_cycle():
    modules = _modules()
    graph = {
        m: sorted(
            {dep for dep, _, _ in _imports(p, set(modules)) if dep in modules and dep != m and dep not in PACKAGES}
        )
        for m, p in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in graph[m]:
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    # the direction: configuration at the bottom, the CLI and the flows at the top
    assert {_room(dep) for m, deps in graph.items() if _room(m) == "config" for dep in deps} <= {"base", "config"}
    assert len(graph) > 40  # every subpackage is walked (a one-level glob would find three modules)


def test_rooms_import_downwards_only():
    modules = _modules()
    upward = []
    for m, path in modules.items():
        for dep, _, line in _imports(path, set(modules)):
            if dep.split(".")[0] == "rest" and ROOMS.index(_room(dep)) > ROOMS.index(_room(m)):
                upward.append(f"{path.relative_to(REPO)}:{line} ({_room(m)}) imports {dep} ({_room(dep)})")
    assert not upward, "\n".join(upward)
    assert {p.parent.name for p in (REPO / "rest").glob("*/__init__.py")} == set(ROOMS) - {"base"}


def test_no_private_name_crosses_a_module():
    modules = _modules()
    found = []
    for m, path in modules.items():
        for dep, names, line in _imports(path, set(modules)):
            found += [
                f"{path.relative_to(REPO)}:{line} imports {dep}.{n}"
                for n in names
                if n.startswith("_") and not n.startswith("__") and dep != m
            ]
        tree = ast.parse(path.read_text())
        aliases = {
            a.asname or a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module
            for a in n.names
            if f"{n.module}.{a.name}" in modules
        }  # `from rest.grow import engines`
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)


def test_the_library_never_imports_prefect():
    offenders = [
        f"{p.relative_to(REPO)}"
        for m, p in _modules().items()
        if _room(m) not in ("flows", "cli") and "prefect" in {d.split(".")[0] for d in _all_imports(p)}
    ]
    assert not offenders  # the library is plain functions; rest/flows/ wires them (the CLI calls the flows)


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_repository_points_at_nothing_outside_it():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for rel in files:
        path = REPO / rel
        if path.suffix in (".parquet", ".png") or not path.is_file() or rel == "tests/test_structure.py":
            continue
        text = path.read_text(errors="ignore")
        for needle in ("../shared", "PLATFORM.md", "DESIGN.md", "STYLE.md"):
            if needle in text:
                hits.append(f"{rel}: {needle}")
    assert not hits, hits


def test_the_environment_is_set_before_torch_in_every_process():
    """MKL_CBWR (bit-exact floats) and the offline switches are in the environment of any process that imports
    rest, before torch is imported: a fresh interpreter that imports the library sees them."""
    code = (
        "import rest.stages, os, sys; "
        "print(os.environ['MKL_CBWR'], os.environ['DO_NOT_TRACK'], os.environ['COMET_ERROR_TRACKING_ENABLE'])"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["AUTO", "1", "false"]


def _code_words(path: Path) -> set[str]:
    """Identifiers, attribute names and string constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    words: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            words.add(n.id)
        elif isinstance(n, ast.Attribute):
            words.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            words.add(n.value)
    return words


def test_only_the_engines_own_room_names_an_engine():
    """Preflight, the stages and the run find an engine through its spec and the config's IN_NO_KEY marks: no code
    outside rest/grow/, the config's Literal and the environment's telemetry switches says `vllm`."""
    offenders = [
        str(p.relative_to(REPO))
        for m, p in _modules().items()
        if _room(m) not in ("grow", "config", "base") and any("vllm" in w.lower() for w in _code_words(p))
    ]
    assert not offenders, offenders


def test_an_engine_is_found_by_its_module_name():
    from rest.errors import RestError
    from rest.grow.engine_vllm import check_vllm
    from rest.grow.engines import engine_spec

    assert engine_spec("torch").name == "torch"
    assert engine_spec("vllm").check is check_vllm
    with pytest.raises(RestError, match="rest/grow/engine_sglang.py"):
        engine_spec("sglang")


def test_a_config_validates_its_rewards_without_importing_torch():
    code = (
        "import sys; from rest.config import load_config; "
        "load_config('configs/numbers.yaml', ['reward.components={chrf: 1.0, learned: 1.0}', 'reward.learned=rm']); "
        "print('torch' in sys.modules, 'rest.rewards.components' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# What names a kind of reward component (rest/config/components.py's table) and may only be used inside rewards/ and
# config/: the table and its lookups, the kinds' own modules, a reward config's per-kind fields, a built-in's name.
KIND_NAMES = {
    "spec_of",
    "kind_of",
    "is_function_reference",
    "REWARD_COMPONENTS",
    "ComponentSpec",
    "REFERENCE_KINDS",
    "FUNCTION",
    "SERVER",
    "MODEL",
}
KIND_MODULES = {f"rest.rewards.{m}" for m in ("functions", "remote", "pretrained", "verifiers", "sandbox", "rules")}
KIND_FIELDS = {"servers", "models", "rules", "learned", "code"}  # RewardConfig fields a kind reads
BUILT_IN = {"chrf", "bleu", "ter", "exact_match", "learned", "math", "code"}
# `rest reward serve` is the server side of the `server` kind's protocol: the one command that runs a kind's code.
KIND_EXCEPTIONS = {("rest.cli.reward", "rest.rewards.remote")}


def _kind_uses(module: str, path: Path, known: set[str]) -> list[str]:
    out = []
    for dep, names, line in _imports(path, known):
        if dep in KIND_MODULES and (module, dep) not in KIND_EXCEPTIONS:
            out.append(f"line {line}: imports {dep}")
        out += [f"line {line}: imports {n}" for n in names if n in KIND_NAMES]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in KIND_FIELDS:
            owner = node.value
            if (isinstance(owner, ast.Attribute) and owner.attr == "reward") or (
                isinstance(owner, ast.Name) and owner.id in ("rc", "reward_cfg")
            ):
                out.append(f"line {node.lineno}: reads reward.{node.attr}")
        if isinstance(node, ast.Compare):
            consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
            out += [f"line {node.lineno}: compares with {c!r}" for c in consts if c in BUILT_IN]
        if isinstance(node, (ast.Set, ast.List, ast.Tuple)):
            consts = {e.value for e in node.elts if isinstance(e, ast.Constant)}
            if len(consts & {"math", "code"}) == 2:
                out.append(f"line {node.lineno}: lists the verifiers")
    return out


def test_only_rewards_and_config_name_a_reward_kind():
    """A new kind of reward is its module in rewards/, its entry in config/components.py and its settings: nothing
    else asks which kind a component is (preflight, Grow's lineage, the control's verifier question all go through
    rest/rewards/kinds.py or the table)."""
    modules = _modules()
    bad = [
        f"{path.relative_to(REPO)} {use}"
        for module, path in modules.items()
        if _room(module) not in ("rewards", "config")
        for use in _kind_uses(module, path, set(modules))
    ]
    assert not bad, "reward kinds named outside rewards/ and config/:\n" + "\n".join(bad)


def test_the_kind_rule_sees_a_kind_named_outside(tmp_path):
    """The rule above would catch the branches it replaced (so it is not vacuous)."""
    src = (
        "from rest.config import is_function_reference\n"
        "def f(cfg, name):\n"
        "    if name in cfg.reward.models or name == 'code':\n"
        "        return VERIFIERS == {'math', 'code'}\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(src)
    uses = _kind_uses("rest.stages.probe", path, set())
    assert {u.split(":")[0] for u in uses} == {"line 1", "line 3", "line 4"}, uses
    assert any("reward.models" in u for u in uses) and any("lists the verifiers" in u for u in uses)


# Module-level state that is not a cache: the lock's record of the run directories this process holds.
NOT_CACHES = {("rest.artifacts.lock", "_HELD")}


def _module_caches(path: Path) -> list[str]:
    """Names of a module's process-wide caches: module-level containers made empty (`{}`, `set()`, `dict()`,
    `OrderedDict()`) and functions under functools.lru_cache / functools.cache."""
    out = []
    for node in ast.parse(path.read_text()).body:
        value, targets = None, []
        if isinstance(node, ast.Assign):
            value, targets = node.value, [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            value, targets = node.value, [node.target.id]
        empty = (isinstance(value, ast.Dict) and not value.keys) or (
            isinstance(value, ast.Call)
            and not value.args
            and getattr(value.func, "id", getattr(value.func, "attr", None)) in ("set", "dict", "OrderedDict")
        )
        if empty:
            out += targets
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                name = ast.unparse(d.func if isinstance(d, ast.Call) else d)
                if name.split(".")[-1] in ("lru_cache", "cache"):
                    out.append(node.name)
    return out


def test_every_process_cache_is_listed_and_cleared_in_one_place():
    """rest/caches.py lists every module-level cache (a module's own release function may stand for its private
    ones), and caches.clear() empties the ones it names."""
    from rest import caches

    listed = {tuple(ref.split(":")) for ref in caches.CACHES.values()}
    released = {module for module, name in listed if name == "release"}
    missing = [
        f"{module}:{name}"
        for module, path in _modules().items()
        for name in _module_caches(path)
        if (module, name) not in listed | NOT_CACHES and not (name.startswith("_") and module in released)
    ]
    assert not missing, "process caches not in rest/caches.py: " + ", ".join(missing)
    from rest.artifacts import manifests, run
    from rest.rewards import components

    manifests.VERIFIED[("x",)] = {}
    run.OPENED[("x",)] = None  # type: ignore[assignment]
    components.BUILT[("x",)] = None  # type: ignore[assignment]
    caches.clear()
    assert not manifests.VERIFIED and not run.OPENED and not components.BUILT
