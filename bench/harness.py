"""What every benchmark command does around its measurements: a scratch directory for the
servers' logs, their tails on a failure, and the report written as Markdown plus JSON."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bench.report import RESULTS


class Harness(Protocol):
    def run(self) -> None: ...

    def close(self) -> None: ...

    def logs(self) -> Iterable[tuple[str, str]]:
        """(title, tail) of each log worth reading when the run failed."""
        ...


H = TypeVar("H", bound=Harness)


def execute(make: Callable[[Path], H], *, name: str, keep: bool = False) -> H:
    """Build the harness on a fresh scratch directory, run it and always close it.

    After a failure the logs' tails go to stderr and the directory is kept (as with `keep`);
    after a success it is removed. The failure itself propagates.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"todo_{name.replace('.', '_')}_"))
    harness = make(workdir)
    failed = True
    try:
        harness.run()
        failed = False
    finally:
        if failed:
            for title, tail in harness.logs():
                print(f"--- {title} ---\n{tail}", file=sys.stderr)
        harness.close()
        if failed or keep:
            print(f"{name}: server logs in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return harness


def write_report(stem: str, markdown: str, payload: Any, *, smoke: bool) -> Path:
    """`results/<stem>.md` and `.json` (under `results/smoke/`, which git ignores, for smoke
    runs); the Markdown's path."""
    directory = RESULTS / "smoke" if smoke else RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.md"
    path.write_text(markdown)
    path.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
