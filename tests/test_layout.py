"""The package layout: the library (router/) never imports its application (workers/).

`router demo` and the simulated city live under workers/; the `router` command finds the
demo through an entry point (router/cli.py: COMMANDS_GROUP), not an import.
"""

from __future__ import annotations

import ast

from support import ROOT

APP = "workers"
#: Calls that import a module named by a string.
DYNAMIC_IMPORTS = {"import_module", "__import__"}


def _is_app(module: str | None) -> bool:
    return module is not None and (module == APP or module.startswith(APP + "."))


def app_imports(source: str) -> list[tuple[int, str]]:
    """(line, what) of each import of the application in ``source``: ``import
    workers...``, ``from workers... import``, and importlib.import_module("workers...") or
    __import__("workers...") with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if _is_app(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_app(node.module):
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in DYNAMIC_IMPORTS and isinstance(node.args[0].value, str) \
                    and _is_app(node.args[0].value):
                found.append((node.lineno, f"{name}({node.args[0].value!r})"))
    return sorted(found)


def test_router_imports_nothing_from_workers():
    modules = sorted((ROOT / "router").rglob("*.py"))
    assert modules, "no module under router/"
    bad = [f"{path.relative_to(ROOT)}:{line}: {what}"
           for path in modules for line, what in app_imports(path.read_text())]
    assert not bad, ("router/ is the library and must not import the application "
                     "(workers/); move the code to workers/ or register it through an "
                     "entry point:\n" + "\n".join(bad))


def test_the_check_sees_every_form_of_import():
    source = ("import workers\nimport os, workers.sim.city as c\nfrom workers.demo import run\n"
              "def f():\n    from workers import orders\n"
              "importlib.import_module('workers.commands')\n__import__('workers')\n"
              "import workersx\nfrom . import workers\nfrom router import workers_count\n"
              "import_module(name)\n")
    assert app_imports(source) == [
        (1, "import workers"), (2, "import workers.sim.city"),
        (3, "from workers.demo import ..."), (5, "from workers import ..."),
        (6, "import_module('workers.commands')"), (7, "__import__('workers')")]


def test_the_demo_lives_in_workers():
    assert not (ROOT / "router" / "demo.py").exists()
    assert (ROOT / "workers" / "demo.py").exists()
