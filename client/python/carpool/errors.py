"""carpool's exceptions: one class per gRPC status a caller can act on, all CarpoolError."""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc


class CarpoolError(Exception):
    """A gRPC error from the coordinator, with its status code (e.g. grpc.StatusCode.NOT_FOUND)
    and message. Catch a subclass for one cause, or this for any."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(CarpoolError):
    """Bad input: an unknown or empty function, an oversize payload, a malformed request."""


class NotFound(CarpoolError):
    """An unknown task id or idempotency key."""


class AlreadyExists(CarpoolError):
    """An idempotency key reused for a different submission."""


class ResourceExhausted(CarpoolError):
    """A full pool, a spent budget, a limit reached: retry later or ask for less."""


class FailedPrecondition(CarpoolError):
    """The work cannot be done as asked: a deadline that cannot be met, a task longer than a
    worker's life."""


class Unavailable(CarpoolError):
    """No active coordinator answered (down, or a standby)."""


class Unauthenticated(CarpoolError):
    """A missing or wrong client token."""


class DeadlineExceeded(CarpoolError):
    """A call took longer than its timeout."""


class TaskFailed(CarpoolError):
    """Raised by a future's result() when its task ended FAILED; `result` holds the Result."""

    def __init__(self, result: object, error: str):
        super().__init__(grpc.StatusCode.ABORTED, error)
        self.result = result


_BY_CODE: Dict[grpc.StatusCode, Type[CarpoolError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

_CODES = {c.value[0]: c for c in grpc.StatusCode}


def error(code: grpc.StatusCode, message: str) -> CarpoolError:
    """The exception for a status: its subclass when there is one, else CarpoolError."""
    return _BY_CODE.get(code, CarpoolError)(code, message)


def from_rpc(e: grpc.RpcError) -> CarpoolError:
    """The exception for a failed gRPC call."""
    code: Optional[grpc.StatusCode] = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return error(code or grpc.StatusCode.UNKNOWN, details or "")


def code_of(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode with this number (UNKNOWN if none matches)."""
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)
