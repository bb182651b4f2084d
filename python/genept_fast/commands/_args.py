"""Argument types shared by the subcommands: :func:`int_range` bounds an integer option so that
an absurd value (``--top-n 99999999999999999999``) is a one-line usage error, not an overflow
deep inside; :func:`url` refuses a malformed URL (bad port, bad IPv6 literal, no scheme) the
same way, naming it with its password masked."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from genept_fast._secrets import check_url
from genept_fast.errors import InvalidArgumentError

if TYPE_CHECKING:
    from collections.abc import Callable

#: The largest count any integer option takes (a 32-bit signed integer).
INT_MAX = 2**31 - 1


def _number(text: str, cast: Callable[[str], float], what: str) -> float:
    try:
        return cast(text)
    except ValueError:
        msg = f"{text!r} is not {what}"
        raise argparse.ArgumentTypeError(msg) from None


def int_range(lo: int = 1, hi: int = INT_MAX) -> Callable[[str], int]:
    """An argparse ``type`` that accepts integers in ``lo..hi``."""

    def parse(text: str) -> int:
        value = int(_number(text, int, "an integer"))
        if not lo <= value <= hi:
            msg = f"{value} is out of range ({lo:,}..{hi:,})"
            raise argparse.ArgumentTypeError(msg)
        return value

    parse.__name__ = "integer"
    return parse


def url(text: str) -> str:
    """An argparse ``type``: an http(s) URL a client can call (see
    :func:`genept_fast._secrets.check_url`); its password is remembered for the scrubber."""
    try:
        return check_url(text, option="URL")
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("URL: ")) from None


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0 (seconds, intervals)."""
    value = _number(text, float, "a number")
    if not (value > 0 and math.isfinite(value)):
        msg = f"{text} must be a finite number > 0"
        raise argparse.ArgumentTypeError(msg)
    return value


def probability(text: str) -> float:
    """An argparse ``type``: a number in [0, 1] (confidences, fractions)."""
    value = _number(text, float, "a number")
    if not 0.0 <= value <= 1.0:
        msg = f"{text} is not a number in [0, 1]"
        raise argparse.ArgumentTypeError(msg)
    return value
