"""Profile the API worker under load with py-spy, and summarise where the time goes."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

_LOCATION = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str:
    found = shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy is missing: pip install -e '.[bench]' (or pip install py-spy)")
    return found


def record(pid: int, output: Path, *, seconds: int, fmt: str, load: Callable[[], object]) -> None:
    """Sample `pid` for `seconds` (100 Hz) while `load()` runs, in flamegraph or raw format."""
    argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"]
    argv += ["--format", fmt, "--output", str(output), "--nonblocking"]
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        load()
    finally:
        _, stderr = sampler.communicate(timeout=seconds + 60)
    if sampler.returncode != 0:
        raise RuntimeError(
            f"py-spy failed ({sampler.returncode}): {stderr.decode(errors='replace')}"
        )


def _frame(raw: str) -> str:
    match = _LOCATION.match(raw.strip())
    if not match:
        return raw.strip()
    path = match["file"]
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['function']} ({path})"


def summarise(collapsed: Path, top: int = 25) -> str:
    """Markdown: the functions with most samples on the stack (inclusive) and on top (self)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(part) for part in stack.split(";")[1:]]  # [0] is the process
        if not frames:
            continue
        total += count
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
        leaf_file = frames[-1].rpartition("(")[2].rstrip(")")
        modules[leaf_file.split("/")[0]] += count
    if not total:
        return "no samples\n"

    def table(title: str, counter: Counter[str], limit: int) -> list[str]:
        lines = [f"| {title} | % of samples |", "|---|---:|"]
        lines += [f"| `{name}` | {100 * n / total:.1f} |" for name, n in counter.most_common(limit)]
        return [*lines, ""]

    out = [f"{total} samples.", ""]
    out += table("self time by package (leaf frame)", modules, 12)
    out += table("self time (leaf function)", own, top)
    out += table("inclusive time (on the stack)", inclusive, top + 15)
    return "\n".join(out)
