"""A few exception classes for the gRPC codes a caller acts on differently, each with the
server's message and its google.rpc details (BadRequest, ErrorInfo, ResourceInfo, RetryInfo,
QuotaFailure) unpacked."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

_DETAIL_TYPES = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
)


class LetheError(Exception):
    """A call or an operation that Lethe refused or that failed.

    `code` is the gRPC status code (a `grpc.StatusCode`), `message` the server's message and
    `details` the google.rpc detail messages it sent."""

    def __init__(self, code: grpc.StatusCode, message: str, details: list[Any] | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details or []

    def detail(self, kind):
        """The first detail of type `kind` (say `error_details_pb2.BadRequest`), or None."""
        return next((d for d in self.details if isinstance(d, kind)), None)

    @property
    def reason(self) -> str | None:
        """The `ErrorInfo` reason (`REQUEST_ID_REUSED`, `TASK_FAILED`, ...), when sent."""
        info = self.detail(error_details_pb2.ErrorInfo)
        return info.reason if info else None


class InvalidArgument(LetheError):
    """The request itself is wrong (INVALID_ARGUMENT): `detail(BadRequest)` names the field."""


class NotFound(LetheError):
    """No such resource for this tenant (NOT_FOUND); another tenant's looks the same."""


class AlreadyExists(LetheError):
    """ALREADY_EXISTS: a name bound to another URL, or a request_id reused for another request."""


class AuthenticationError(LetheError):
    """UNAUTHENTICATED or PERMISSION_DENIED: a missing, unknown, revoked or wrong-kind token."""


class FailedPrecondition(LetheError):
    """The request is valid but the state does not allow it (no index yet, say)."""


class Unavailable(LetheError):
    """UNAVAILABLE, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED: try again later. Idempotent calls
    were already retried with backoff before this was raised."""


class OperationFailed(LetheError):
    """A done operation that failed or was cancelled; `reason` is its `FailureReason`."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}

_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def unpack_details(details: list[any_pb2.Any]) -> list[Any]:
    unpacked = []
    for detail in details:
        for kind in _DETAIL_TYPES:
            message = kind()
            if detail.Unpack(message):
                unpacked.append(message)
                break
        else:
            unpacked.append(detail)
    return unpacked


def from_rpc_error(error: grpc.RpcError) -> LetheError:
    """The exception for a failed call, with the details of `grpc-status-details-bin`."""
    # Every error of a completed call is also a grpc.Call; one raised before it was sent
    # (a closed channel) may not be.
    if not isinstance(error, grpc.Call):
        return LetheError(grpc.StatusCode.UNKNOWN, str(error))
    details: list[Any] = []
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            details = unpack_details(list(status_pb2.Status.FromString(value).details))
    code = error.code()
    return _BY_CODE.get(code, LetheError)(code, error.details() or "", details)


def from_status(status: status_pb2.Status) -> OperationFailed:
    """The exception for a failed operation's `google.rpc.Status`."""
    code = _CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    if status.code == code_pb2.OK:
        code = grpc.StatusCode.UNKNOWN
    return OperationFailed(code, status.message, unpack_details(list(status.details)))
