"""Every setting is documented: in .env.example with a comment, and in the README's table."""

from __future__ import annotations

import re
from pathlib import Path

from todo_api.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = sorted(name.upper() for name in Settings.model_fields)


def test_env_example_lists_every_setting_with_a_comment() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for name in SETTINGS:
        index = next((i for i, line in enumerate(lines) if re.match(rf"#?\s*{name}=", line)), None)
        assert index is not None, f"{name} is missing from .env.example"
        assert index > 0 and lines[index - 1].startswith("#"), f"{name} has no comment above it"


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in SETTINGS if f"`{name}`" not in readme]
    assert not missing, f"not in README.md: {missing}"
