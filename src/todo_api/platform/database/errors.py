"""One error type for every database failure, whichever driver raised it.

Each executor translates its driver's exceptions into `DatabaseError` at the point where it
knows what happened (before or after sending, whether the server answered). The retry policy
(`Database`) and the HTTP answers (`todo_api.platform.http.problems`) decide from its fields
alone, never from driver exception classes.
"""

from __future__ import annotations

from enum import Enum


class DatabaseUnavailable(Exception):
    """The database could not be reached; the message says where and why, without secrets."""


class Failure(Enum):
    UNAVAILABLE = "unavailable"  # not reachable now (outage, restart, pool exhausted): 503
    TIMEOUT = "timeout"  # DB_STATEMENT_TIMEOUT passed; the statement was cancelled: 503
    CONFLICT = "conflict"  # deadlock victim or serialization failure; nothing kept: retry
    INTEGRITY = "integrity"  # a constraint refused the change: 409
    BUG = "bug"  # anything else (bad SQL, a missing column): ours to fix, 500


# admin_shutdown, crash_shutdown, cannot_connect_now: the server is going away or not there yet.
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
# serialization_failure, deadlock_detected: the server aborted the transaction and kept nothing
# of it; running it again is safe and usually succeeds.
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})


class DatabaseError(Exception):
    """A statement or transaction failed.

    - `failure`: what kind of failure, which decides the answer;
    - `sqlstate`: the server's (or the driver's) SQLSTATE, when there is one;
    - `connection_lost`: the connection is gone or could not be vouched for (it left the pool);
    - `not_executed`: the work provably did not take effect: it never left this process, or
      the server refused it before doing anything. Only then may a write run again.
    """

    def __init__(
        self,
        reason: str,
        *,
        failure: Failure,
        sqlstate: str | None = None,
        connection_lost: bool = False,
        not_executed: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failure = failure
        self.sqlstate = sqlstate
        self.connection_lost = connection_lost
        self.not_executed = not_executed

    def __str__(self) -> str:
        state = f" (SQLSTATE {self.sqlstate})" if self.sqlstate else ""
        return f"{self.reason}{state}"


def failure_of_sqlstate(sqlstate: str | None) -> Failure:
    """The failure a server-reported SQLSTATE stands for."""
    code = sqlstate or ""
    if code in CONFLICT_SQLSTATES:
        return Failure.CONFLICT
    if code.startswith("23"):  # integrity_constraint_violation
        return Failure.INTEGRITY
    if code.startswith(("08", "53")) or code in UNAVAILABLE_SQLSTATES:
        # connection exceptions; insufficient resources (too many connections, disk full)
        return Failure.UNAVAILABLE
    if code == "57014":  # query_canceled (our statement timeout's cancel)
        return Failure.TIMEOUT
    return Failure.BUG


def describe_error(error: BaseException) -> str:
    """The driver's own reason, without SQLAlchemy's statement and parameter dump."""
    if isinstance(error, DatabaseError):
        return str(error)
    original = getattr(error, "orig", None)
    if isinstance(original, BaseException):
        error = original
    reason = str(error).strip() or ("timed out" if isinstance(error, TimeoutError) else "no detail")
    return f"{type(error).__name__}: {reason}"


def sqlstate_of(error: BaseException | None) -> str | None:
    """The SQLSTATE a driver error (or one SQLAlchemy wraps) carries; None: none."""
    if isinstance(error, DatabaseError):
        return error.sqlstate
    original = getattr(error, "orig", None)
    driver_error = original if isinstance(original, BaseException) else error
    code = getattr(driver_error, "sqlstate", None) or getattr(driver_error, "pgcode", None)
    return str(code) if code else None
