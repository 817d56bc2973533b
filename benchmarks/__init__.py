"""Benchmarks of the router: one command, ``python -m benchmarks COMMAND``.

Kept free of imports: driver and contender programs run as ``python -m
benchmarks.<...>`` and import this package first.
"""

import os

#: The repository's root (the router package and ext/ live there).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
