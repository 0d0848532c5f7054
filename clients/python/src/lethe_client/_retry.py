"""Retries with jittered exponential backoff, for idempotent calls only: reads, registrations
(registering the same thing again returns it) and creates that carry a request_id."""

from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

import grpc
from google.rpc import error_details_pb2

from .errors import LetheError, Unavailable, from_rpc_error

T = TypeVar("T")

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


class Backoff:
    """How often and how patiently an idempotent call is retried."""

    def __init__(self, attempts: int = 5, first: float = 0.2, cap: float = 5.0):
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.attempts = attempts
        self.first = first
        self.cap = cap

    def delay(self, attempt: int, error: LetheError) -> float:
        # The server's own hint (RetryInfo) wins over the schedule.
        hint = error.detail(error_details_pb2.RetryInfo)
        if hint is not None and hint.HasField("retry_delay"):
            return hint.retry_delay.ToTimedelta().total_seconds()
        return random.uniform(0.5, 1.0) * min(self.cap, self.first * 2**attempt)


def call(invoke: Callable[[], T], backoff: Backoff, idempotent: bool) -> T:
    """Runs `invoke`, mapping gRPC errors to Lethe's; retries transient ones when idempotent."""
    for attempt in range(backoff.attempts):
        try:
            return invoke()
        except grpc.RpcError as raw:
            error = from_rpc_error(raw)
            last = attempt + 1 == backoff.attempts
            if not idempotent or error.code not in _RETRYABLE or last:
                raise error from None
            time.sleep(backoff.delay(attempt, error))
    raise Unavailable(grpc.StatusCode.UNAVAILABLE, "no attempt was made")
