"""A multi-user task (todo) API on FastAPI + SQLModel."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("todo-api")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
