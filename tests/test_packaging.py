"""A clean `pip install .` in a new virtualenv builds the core and runs (long: ~1-2 min)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from router.client import Sender

from support import ROOT, answers_hello, free_port, wait_until

pytestmark = pytest.mark.long


@pytest.mark.timeout(660)  # pip builds the core from source (about 70 s on an idle machine)
def test_pip_install_in_fresh_venv_builds_and_routes(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.so", "*.egg-info", "__pycache__", "core.cpp", "protocol.pxi"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(src)], check=True, timeout=600)
    # Run from a neutral directory so the installed package, not the checkout, is used.
    version = subprocess.run([str(venv / "bin" / "router"), "--version"], cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout
    assert "native core: libzmq" in version and "pyzmq.libs" in version
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    server = subprocess.Popen([str(venv / "bin" / "router"), "serve", "--bind", url],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: answers_hello(url), 10, "the installed router to answer a HELLO")
        listener = subprocess.Popen([str(venv / "bin" / "router"), "listen", "user:1",
                                     "--router", url, "--count", "1", "--timeout", "10"],
                                    cwd=tmp_path, stdout=subprocess.PIPE, text=True)
        with Sender(url, "packaging-probe") as probe:
            wait_until(lambda: probe.presence(["user:1"])["user:1"] is not None, 10,
                       "the listener to bind user:1")
        sent = subprocess.run([str(venv / "bin" / "router"), "send", "user:1", "hello",
                               "--router", url, "--wait", "delivered"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=20)
        assert sent.returncode == 0, sent.stderr
        out, _ = listener.communicate(timeout=15)
        assert "user:1 seq=1" in out and "hello" in out
    finally:
        server.terminate()
        server.wait(10)
