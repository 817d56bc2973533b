"""The README's Python example and the docstring examples in router/ run as written.

Each runs verbatim in its own interpreter against a real `router serve` bound to the
endpoint the examples name (tcp://127.0.0.1:5555), and what it prints must match the
``# ...`` comments on its print lines (``...`` in a comment matches anything).
"""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support import ROOT, RouterProcess

EXAMPLE_PORT = 5555
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def readme_blocks() -> list[str]:
    """Every ```python block of README.md, in order."""
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(),
                      re.S | re.M)


def readme_example() -> str:
    """The first ```python block of README.md: the example."""
    blocks = readme_blocks()
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def literal_blocks(doc: str) -> list[str]:
    """The reStructuredText literal blocks (after a line ending in ``::``) of ``doc``."""
    blocks, lines = [], doc.splitlines()
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        body = []
        for nxt in lines[i + 1:]:
            if nxt.strip() and not nxt.startswith((" ", "\t")):
                break
            body.append(nxt)
        blocks.append(textwrap.dedent("\n".join(body)).strip("\n") + "\n")
    return blocks


def claims_output(code: str) -> bool:
    """An example claims output when it asserts, or comments what a print shows."""
    return bool(re.search(r"^\s*assert\b|print\(.*\)\s*#", code, re.M))


def docstring_examples() -> list[tuple[str, str]]:
    """(where, code) of every docstring example in router/ that claims output."""
    out = []
    for path in sorted((ROOT / "router").glob("*.py")):
        tree = ast.parse(path.read_text())
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(
            n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in nodes:
            doc = ast.get_docstring(node) or ""
            for code in literal_blocks(doc):
                if claims_output(code):
                    out.append((f"{path.name}:{getattr(node, 'name', 'module')}", code))
    return out


def expected_lines(code: str) -> list[str]:
    """The comment of each print line, in order: what that line must print."""
    return [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s*#(.*)$", code, re.M)]


def matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def port_busy(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture(scope="module")
def example_router():
    """A router that also binds the examples' endpoint, 127.0.0.1:5555."""
    if port_busy(EXAMPLE_PORT):
        pytest.skip(f"127.0.0.1:{EXAMPLE_PORT}, the port the README example uses, is taken "
                    "by another program; free it to run this test")
    r = RouterProcess("--bind", f"tcp://127.0.0.1:{EXAMPLE_PORT}")
    try:
        r.start()
    except RuntimeError:
        if "already in use" in r.log():  # taken between the check and the bind
            pytest.skip(f"127.0.0.1:{EXAMPLE_PORT} was taken by another program meanwhile")
        raise
    yield r
    r.stop()


def run_example(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=30)


def test_readme_example_runs_verbatim_and_prints_what_it_says(example_router, tmp_path):
    code = readme_example()
    expected = expected_lines(code)
    assert expected == ["order.created {'order': 1001, ...}", "DELIVERED"], expected
    out = run_example(code, tmp_path)
    assert out.returncode == 0, out.stderr
    printed = out.stdout.splitlines()
    assert len(printed) == len(expected), out.stdout
    for want, got in zip(expected, printed):
        assert matches(want, got), f"printed {got!r}, the README says {want!r}"
    assert "'notes': 'no scallions'" in printed[0]


def test_every_other_readme_block_runs_and_prints_what_it_says(example_router, tmp_path):
    blocks = readme_blocks()[1:]
    assert blocks, "the README's SDK section has a python block"
    for code in blocks:
        out = run_example(code, tmp_path)
        assert out.returncode == 0, f"README block failed:\n{code}\n{out.stderr}"
        printed, expected = out.stdout.splitlines(), expected_lines(code)
        assert len(printed) == len(expected), out.stdout
        for want, got in zip(expected, printed):
            assert matches(want, got), f"printed {got!r}, the README says {want!r}"


def test_docstring_examples_that_claim_output_run(example_router, tmp_path):
    examples = docstring_examples()
    assert any(where == "client.py:module" for where, _ in examples), examples
    for where, code in examples:
        out = run_example(code, tmp_path)
        assert out.returncode == 0, f"{where} example failed:\n{code}\n{out.stderr}"
        printed = out.stdout.splitlines()
        for want, got in zip(expected_lines(code), printed):
            assert matches(want, got), f"{where}: printed {got!r}, the docstring says {want!r}"


def test_comment_matching_is_literal_apart_from_ellipsis():
    assert matches("order.created {'order': 1001, ...}",
                   "order.created {'order': 1001, 'notes': 'no scallions'}")
    assert not matches("DELIVERED", "2")
    assert not matches("order.created {'order': 1001, ...}", "order.created {'order': 1002}")
