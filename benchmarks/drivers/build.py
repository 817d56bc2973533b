"""Build the native load generator (benchmarks/drivers/loadgen.pyx) in place.

    python -m benchmarks build            # build if missing or stale
    python -m benchmarks build --force    # rebuild

The module is compiled against ``ext/zmqapi.h`` (cimported through ``ext/zmqapi.pxd``) and
never links libzmq: at import it resolves libzmq's functions from the copy pyzmq loaded.
Driver programs call :func:`import_loadgen`; orchestrators call :func:`ensure_built` first
so that several drivers starting at once find it built.
"""

from __future__ import annotations

import fcntl
import importlib.machinery
import os
import subprocess
import sys
from dataclasses import dataclass

from benchmarks import ROOT
from benchmarks.harness.options import option, parse_options

HERE = os.path.dirname(os.path.abspath(__file__))
EXT_DIR = os.path.join(ROOT, "ext")
PYX = os.path.join(HERE, "loadgen.pyx")
BUILD_DIR = os.path.join(HERE, "build")
MODULE = "benchmarks.drivers.loadgen"
SOURCES = (
    PYX,
    os.path.abspath(__file__),
    os.path.join(EXT_DIR, "zmqapi.h"),
    os.path.join(EXT_DIR, "zmqapi.pxd"),
)


@dataclass
class BuildOptions:
    """Options of ``python -m benchmarks build``."""

    force: bool = option(False, "rebuild even if up to date")
    quiet: bool = option(False, "print nothing")


def module_path() -> str:
    """Where the built extension lives."""
    return os.path.join(HERE, "loadgen" + importlib.machinery.EXTENSION_SUFFIXES[0])


def is_stale() -> bool:
    """True if the extension is missing or older than any of its sources."""
    target = module_path()
    if not os.path.exists(target):
        return True
    built = os.path.getmtime(target)
    return any(os.path.getmtime(src) > built for src in SOURCES if os.path.exists(src))


def build(force: bool = False, quiet: bool = False) -> str:
    """Compile loadgen.pyx next to itself (setuptools build_ext, in place)."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    ext = Extension(
        MODULE,
        [PYX],
        include_dirs=[EXT_DIR],
        extra_compile_args=["-O2", "-Wno-unused-function"],
    )
    modules = cythonize(
        [ext],
        include_path=[EXT_DIR],
        build_dir=BUILD_DIR,
        compiler_directives={"language_level": 3},
        force=force,
        quiet=quiet,
    )
    dist = Distribution({"ext_modules": modules, "script_name": "build.py"})
    cmd = dist.get_command_obj("build_ext")
    # The dotted module name puts the result under ROOT/benchmarks/drivers/, as --inplace.
    cmd.build_lib = ROOT
    cmd.build_temp = os.path.join(BUILD_DIR, "tmp")
    cmd.force = force
    dist.run_command("build_ext")
    return module_path()


def ensure_built() -> str:
    """Build in a subprocess if the module is missing or stale; return its path.

    A lock file serialises concurrent callers (several driver processes start at once).
    """
    if not is_stale():
        return module_path()
    os.makedirs(BUILD_DIR, exist_ok=True)
    with open(os.path.join(BUILD_DIR, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_stale():
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks", "build", "--quiet"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0 or is_stale():
                raise RuntimeError(
                    "building benchmarks/drivers/loadgen.pyx failed; run `python -m "
                    f"benchmarks build` to see why:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
                )
    return module_path()


def import_loadgen():
    """Build if needed, then import and return the ``loadgen`` module."""
    ensure_built()
    from benchmarks.drivers import loadgen

    return loadgen


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks build``: build loadgen if missing or stale (or --force)."""
    opts = parse_options(BuildOptions, argv, prog="python -m benchmarks build",
                         doc=__doc__)
    if not opts.force and not is_stale():
        if not opts.quiet:
            print(f"up to date: {module_path()}")
        return 0
    path = build(force=opts.force, quiet=opts.quiet)
    if not opts.quiet:
        print(f"built: {path}")
    return 0
