"""The package's shape, read off its source with ``ast``: imports point down the declared order of
stages, there is no import circle, a function-local import between neurflow modules says why on its
line, and no module reaches for another module's private names."""

import ast
import sys
from collections import defaultdict
from pathlib import Path

import neurflow

PKG = Path(neurflow.__file__).resolve().parent

# the stages, bottom up: a module may import from its own stage and the stages below it, never above
ORDER = [
    ("_version", "errors"),
    ("config", "options", "progress", "provenance"),
    ("circuit",),
    ("neurons", "_state"),
    ("store",),
    ("sources", "zoo"),
    ("slicing",),
    ("attribution",),
    ("method",),
    ("analysis",),
    ("demo", "atlas"),
    ("cli",),
]
RANK = {name: i for i, names in enumerate(ORDER) for name in names}
TOP_LEVEL_LIMIT = 12  # modules directly under neurflow/, besides __init__ and _version


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["neurflow", *parts])] = path
    return out


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports(name: str, path: Path):
    """(imported neurflow module, line, in a function, the import's source line, names) of a module."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    package = name if is_package(path) else name.rsplit(".", 1)[0]
    functions = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
    }
    known = modules()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "neurflow":
                target = node.module
            else:
                continue
            names = [a.name for a in node.names]
            found = [f"{target}.{n}" for n in names if f"{target}.{n}" in known] or [target]
        elif isinstance(node, ast.Import):
            found = [a.name for a in node.names if a.name.split(".")[0] == "neurflow"]
            names = []
        else:
            continue
        for target in found:
            if target in known or any(k.startswith(target + ".") for k in known):
                yield target, node.lineno, id(node) in functions, lines[node.lineno - 1], names


def stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else "__init__"


def edges():
    for name, path in modules().items():
        for target, line, local, text, names in imports(name, path):
            yield name, target, line, local, text, names


def test_imports_only_point_down_the_declared_order():
    assert set(RANK) >= {stage(m) for m in modules() if m != "neurflow"}, "a stage missing from ORDER"
    wrong = []
    for src, dst, line, *_ in edges():
        if src == "neurflow" or dst == "neurflow":
            continue  # the package root: its lazy exports (strings) and `from neurflow import X` in no module
        if RANK[stage(dst)] > RANK[stage(src)]:
            wrong.append(f"{src}:{line} imports {dst} ({stage(dst)} is above {stage(src)})")
    assert not wrong, "\n".join(wrong)


def circles() -> list[str]:
    graph = defaultdict(set)
    for src, dst, *_ in edges():
        if src != dst and dst != "neurflow":
            graph[src].add(dst)
    state: dict = {}
    found = []

    def visit(n, path):
        state[n] = "open"
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                found.append(" -> ".join(path[path.index(m) :] + [m]))
            elif m not in state:
                visit(m, path + [m])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def test_no_import_circles():
    """Over every import, module-level and function-local: a lazy import hides a circle, it does not
    remove it (a module importing its package's ``__init__`` counts like any other import)."""
    assert not circles(), "\n".join(circles())


def test_function_local_imports_say_why():
    silent = [
        f"{src}:{line}: {text.strip()}"
        for src, dst, line, local, text, _ in edges()
        if local and "#" not in text and not text.rstrip().endswith("(")
    ]
    assert not silent, "function-local imports between neurflow modules need a one-line reason:\n" + "\n".join(silent)


def test_no_private_names_across_modules():
    leaks = [
        f"{src}:{line} imports {', '.join(n for n in names if n.startswith('_'))} from {dst}"
        for src, dst, line, _, _, names in edges()
        if any(n.startswith("_") and not n.startswith("__") for n in names)
    ]
    assert not leaks, "\n".join(leaks)


def test_few_modules_at_the_top():
    top = [p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "_version")]
    assert len(top) <= TOP_LEVEL_LIMIT, sorted(top)
    assert all((PKG / s / "__init__.py").exists() for s in RANK if not (PKG / f"{s}.py").exists())


def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch):
    """The walker sees an upward import and a circle (a check that cannot fail is no check)."""
    fake = tmp_path / "neurflow"
    (fake / "store").mkdir(parents=True)
    (fake / "method").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "store" / "__init__.py").write_text("")
    (fake / "method" / "__init__.py").write_text("")
    (fake / "store" / "files.py").write_text("from ..method.run import go\n")
    (fake / "method" / "run.py").write_text("def go():\n    from ..store import files\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    ups = [(s, d) for s, d, *_ in edges() if RANK[stage(d)] > RANK[stage(s)]]
    assert ups == [("neurflow.store.files", "neurflow.method.run")]
    locals_ = [(s, d) for s, d, _, local, text, _ in edges() if local and "#" not in text]
    assert locals_ == [("neurflow.method.run", "neurflow.store.files")]
    assert circles() == ["neurflow.method.run -> neurflow.store.files -> neurflow.method.run"]
