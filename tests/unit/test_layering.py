"""collie's imports follow the floors `docs/architecture.md` lists: no file imports a file of a
higher floor, no two files import each other (directly or around a circle), and an import
made inside a function says why on its line."""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "collie")
MAX_FUNCTION_IMPORTS = 10


def floors_from_doc(text: str) -> dict[str, int]:
    """`| 3 | `collie.peft`, `collie.data` | …` rows of the doc's floors table: module prefix → floor."""
    floors = {}
    for number, names in re.findall(r"^\|\s*(\d+)\s*\|([^|]*)\|", text, flags=re.MULTILINE):
        for name in re.findall(r"`(collie[\w.]*)`", names):
            floors[name] = int(number)
    return floors


def modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: str, known: dict[str, str]) -> list[tuple[str, int, bool, str]]:
    """(imported collie module, line, inside a function, the source line) for each import of `name`."""
    source = open(path, encoding="utf-8").read()
    lines = source.splitlines()
    tree = ast.parse(source)
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    in_function = {id(node) for function in functions for node in ast.walk(function)}
    is_package = path.endswith("__init__.py")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name and target.split(".")[0] == "collie":
                # A package's own __init__ re-exporting its files is not an arrow between floors.
                if is_package and target.startswith(name + "."):
                    continue
                found.append((target, node.lineno, id(node) in in_function, lines[node.lineno - 1]))
    return found


def floor_of(module: str, floors: dict[str, int]) -> int:
    """The floor of the longest listed prefix (the package `collie` itself only by its own name)."""
    prefix = module
    while prefix not in floors or (prefix == "collie" and module != "collie"):
        if "." not in prefix:
            raise AssertionError(f"{module}: no floor in docs/architecture.md says where it belongs")
        prefix = prefix.rsplit(".", 1)[0]
    return floors[prefix]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def check(floors: dict[str, int], known: dict[str, str]) -> list[str]:
    """Every problem, one line each."""
    problems, edges, inside = [], {name: set() for name in known}, 0
    for name, path in sorted(known.items()):
        for target, line, in_function, text in imports(name, path, known):
            edges[name].add(target)
            if floor_of(target, floors) > floor_of(name, floors):
                problems.append(f"{name}:{line} imports {target}, a higher floor")
            if in_function:
                inside += 1
                if "#" not in text:
                    problems.append(f"{name}:{line} imports {target} inside a function without a reason comment")
    problems += [f"import circle: {' -> '.join(c)}" for c in cycles(edges)]
    if inside > MAX_FUNCTION_IMPORTS:
        problems.append(f"{inside} imports inside functions (at most {MAX_FUNCTION_IMPORTS})")
    return problems


def test_imports_follow_the_floors_of_the_architecture_doc():
    floors = floors_from_doc(open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read())
    assert floors, "docs/architecture.md lists no floors"
    assert check(floors, modules()) == []


def test_an_arrow_against_the_floors_or_a_circle_is_found(tmp_path):
    """The checker itself: a low file importing a high one, and two files importing each other."""
    package = tmp_path / "collie"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("from collie import high\n")
    (package / "high.py").write_text("import collie.low.a\n\ndef f():\n    from collie.low import b\n")
    (package / "low" / "b.py").write_text("from collie.low import a\n")
    known = {"collie": str(package / "__init__.py"), "collie.low": str(package / "low" / "__init__.py"),
             "collie.low.a": str(package / "low" / "a.py"), "collie.low.b": str(package / "low" / "b.py"),
             "collie.high": str(package / "high.py")}
    problems = check({"collie.low": 0, "collie.high": 1, "collie": 2}, known)
    assert "collie.low.a:1 imports collie.high, a higher floor" in problems
    assert "collie.high:4 imports collie.low.b inside a function without a reason comment" in problems
    assert "import circle: collie.high -> collie.low.a -> collie.low.b" in problems
    with pytest.raises(AssertionError, match="collie.other: no floor"):
        floor_of("collie.other", {"collie.low": 0, "collie": 2})
