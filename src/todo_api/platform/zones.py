"""IANA time zone names, checked against the zone data shipped with the app (`tzdata`).

Only names in that database are accepted (`Europe/Berlin`, `UTC`): offsets such as `UTC+5`
(which break clients: todoist-api-python#620), made-up names and paths (`../../etc/passwd`)
are refused before `ZoneInfo` is ever asked to open a file.
"""

from __future__ import annotations

import functools
import zoneinfo
from importlib import resources
from typing import Annotated

from pydantic import AfterValidator, Strict, StringConstraints

ZONE_NAME_MAX = 64


@functools.cache
def zone_names() -> frozenset[str]:
    # The shipped tzdata's names, not the host's: `available_timezones()` also lists the files
    # of the host's zoneinfo directory, where Debian has `localtime` (the host's own zone).
    listed = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
    return frozenset(listed.split())


def checked_zone(name: str) -> str:
    if name not in zone_names():
        raise ValueError(
            f"{name!r} is not an IANA time zone name (for example Europe/Berlin, "
            "America/New_York or UTC)"
        )
    return name


@functools.lru_cache(maxsize=1024)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """The zone of a name already checked (stored values, validated input), read from the
    shipped tzdata: `ZoneInfo(name)` would prefer the host's /usr/share/zoneinfo, whose
    version (and so a zone's rules) differs from host to host."""
    data = resources.files("tzdata.zoneinfo").joinpath(*checked_zone(name).split("/"))
    with data.open("rb") as file:
        return zoneinfo.ZoneInfo.from_file(file, key=name)


ZoneName = Annotated[
    str,
    Strict(),
    StringConstraints(min_length=1, max_length=ZONE_NAME_MAX),
    AfterValidator(checked_zone),
]
