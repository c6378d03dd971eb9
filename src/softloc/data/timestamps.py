"""Timestamps and angles written as text, read to one convention or refused with the reason.

A timestamp cell is either

- a number: a count since 1970-01-01 UTC whose magnitude gives the unit. Below 1e11 it is
  seconds (1e11 s is the year 5138, so every real epoch in seconds is below it; small or
  negative numbers, such as times relative to the start of a drive, are seconds too); from 1e11
  to below 1e14 it is milliseconds (1e11 ms is 1973-03-03, so every epoch in milliseconds
  since then is in this range: the Mapillary API's unit); from 1e14 to below 1e17 it is
  microseconds (RobotCar's unit). Larger numbers are refused.
- an ISO-8601 date and time: ``YYYY-MM-DD``, optionally followed by ``T`` or a space and
  ``hh:mm[:ss[.fraction]]``, optionally followed by ``Z`` or an offset ``+hh[:mm]`` /
  ``-hh[mm]``; the basic form ``YYYYMMDDThhmmss`` is read too. A time without a zone is read
  as UTC.

Everything else (an empty cell, ``nan``, a date that does not exist) raises ``ValueError``:
readers turn that into a ``bad_timestamp`` row, never into a silent 0.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

#: Numbers at or above these magnitudes are milliseconds, then microseconds, then refused.
MILLISECONDS_FROM = 1e11
MICROSECONDS_FROM = 1e14
TOO_LARGE_FROM = 1e17

_ISO = re.compile(
    r"^(?P<year>\d{4})(?P<dash>-?)(?P<month>\d{2})(?P=dash)(?P<day>\d{2})"
    r"(?:[Tt ](?P<hour>\d{2})(?P<colon>:?)(?P<minute>\d{2})"
    r"(?:(?P=colon)(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?"
    r"\s*(?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?$"
)
ACCEPTED = ("epoch seconds, milliseconds or microseconds, or an ISO-8601 date and time such as "
            "2020-05-01T10:00:01, 2020-05-01 10:00:01.250 or 2020-05-01T10:00:01+02:00")


def parse_timestamp(text: str | None) -> float:
    """UNIX seconds (UTC) of a timestamp cell; see the module docstring for the forms.

    Raises:
        ValueError: empty, not finite, out of range, or neither a number nor ISO-8601.
    """
    text = (text or "").strip()
    if not text:
        raise ValueError("empty timestamp")
    try:
        value = float(text)
    except ValueError:
        return _parse_iso(text)
    if not math.isfinite(value):
        raise ValueError(f"timestamp {text!r} is not a finite number")
    size = abs(value)
    if size < MILLISECONDS_FROM:
        return value
    if size < MICROSECONDS_FROM:
        return value / 1e3
    if size < TOO_LARGE_FROM:
        return value / 1e6
    raise ValueError(f"timestamp {text!r} is too large for epoch seconds, milliseconds or "
                     "microseconds")


def _parse_iso(text: str) -> float:
    match = _ISO.match(text)
    if not match:
        raise ValueError(f"timestamp {text!r} is not {ACCEPTED}")
    part = match.groupdict()
    try:
        moment = datetime(
            int(part["year"]), int(part["month"]), int(part["day"]), int(part["hour"] or 0),
            int(part["minute"] or 0), int(part["second"] or 0), tzinfo=timezone.utc,
        )
    except ValueError as error:
        raise ValueError(f"timestamp {text!r}: {error}") from None
    seconds = moment.timestamp()
    if part["fraction"]:
        seconds += float("0." + part["fraction"])
    zone = part["zone"]
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        if offset >= timedelta(hours=24):
            raise ValueError(f"timestamp {text!r}: zone offset {zone} is not below 24 h")
        seconds -= sign * offset.total_seconds()
    return seconds


def parse_angle(text: str | None) -> float:
    """A finite number from a heading or yaw cell (the caller knows the unit).

    Raises:
        ValueError: empty, not a number, or not finite.
    """
    text = (text or "").strip()
    if not text:
        raise ValueError("empty")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value
