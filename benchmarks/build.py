"""Build the native load generator (benchmarks/loadgen.pyx) in place.

    python benchmarks/build.py            # build if missing or stale
    python benchmarks/build.py --force    # rebuild

The module is compiled against ``ext/zmqapi.h`` (cimported through ``ext/zmqapi.pxd``) and
never links libzmq: at import it resolves libzmq's functions from the copy pyzmq loaded.
Other scripts call :func:`ensure_built` before ``import loadgen``.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.machinery
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXT_DIR = os.path.join(ROOT, "ext")
PYX = os.path.join(HERE, "loadgen.pyx")
BUILD_DIR = os.path.join(HERE, "build")
SOURCES = (
    PYX,
    os.path.abspath(__file__),
    os.path.join(EXT_DIR, "zmqapi.h"),
    os.path.join(EXT_DIR, "zmqapi.pxd"),
)


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
    """Compile loadgen.pyx into benchmarks/ (setuptools build_ext, in place)."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    ext = Extension(
        "loadgen",
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
    cmd.build_lib = HERE  # same result as --inplace for a top-level module in benchmarks/
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
                [sys.executable, os.path.abspath(__file__), "--quiet"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0 or is_stale():
                raise RuntimeError(
                    "building benchmarks/loadgen.pyx failed; run `python benchmarks/build.py`"
                    f" to see why:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
                )
    return module_path()


def import_loadgen():
    """Build if needed, then import and return the ``loadgen`` module."""
    ensure_built()
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import loadgen

    return loadgen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not args.force and not is_stale():
        if not args.quiet:
            print(f"up to date: {module_path()}")
        return 0
    path = build(force=args.force, quiet=args.quiet)
    if not args.quiet:
        print(f"built: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
