"""argparse types shared by the `router` command and its subcommands' parsers: each
turns a bad value into a one-line usage error naming the flag."""

from __future__ import annotations

import argparse
from typing import Callable

from . import config
from .session import check_address, check_channel


def arg_type(check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type that runs ``check`` and turns its ValueError into a usage error."""

    def convert(text: str) -> str:
        try:
            check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return convert


endpoint = arg_type(config.check_endpoint)
#: One router, or an active router and its standbys: tcp://a:5555,tcp://b:5555.
endpoints = arg_type(config.split_endpoints)
address = arg_type(check_address)
channel = arg_type(check_channel)


def int_in(low: int, high: int, unit: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in low..high (argparse names the flag)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}{unit}, got {value}")
        return value

    return convert


def seconds(text: str) -> float:
    """An argparse type: seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"seconds must be 0 or more, got {text}")
    return value
