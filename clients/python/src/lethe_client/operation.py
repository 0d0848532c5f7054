"""A handle on a long-running operation: an index build, a deletion request (or its run), a
no-op. It holds the last state the coordinator sent and asks for newer ones."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator, Union

import grpc
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2
from lethe.v1 import lethe_pb2, results_pb2

from ._retry import call
from .errors import from_rpc_error, from_status

if TYPE_CHECKING:
    from .client import Client

Result = Union[results_pb2.DeletionResult, results_pb2.IndexBuildResult, results_pb2.NoopResult]

_RESULT_TYPES = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (results_pb2.DeletionResult, results_pb2.IndexBuildResult, results_pb2.NoopResult)
}

# The longest one WaitOperation waits on the server.
_WAIT_SLICE = 60.0


class OperationNotDone(RuntimeError):
    """`result()` of an operation that is still running."""


class Operation:
    """An operation as last seen. `wait()`, `watch()` and `refresh()` see it again."""

    def __init__(self, client: "Client", message: operations_pb2.Operation):
        self._client = client
        self._message = message

    def __repr__(self) -> str:
        return f"<Operation {self.name} {self.state} {self.progress:.0%}>"

    @property
    def name(self) -> str:
        """`operations/{uuid}`."""
        return self._message.name

    @property
    def done(self) -> bool:
        return self._message.done

    @property
    def metadata(self) -> lethe_pb2.OperationMetadata:
        metadata = lethe_pb2.OperationMetadata()
        self._message.metadata.Unpack(metadata)
        return metadata

    @property
    def state(self) -> str:
        """QUEUED, RUNNING, CANCELLING, SUCCEEDED, FAILED or CANCELLED."""
        name = lethe_pb2.OperationState.Name(self.metadata.state)
        return name.removeprefix("OPERATION_STATE_")

    @property
    def kind(self) -> str:
        """INDEX_BUILD, DELETION, DELETION_RUN or NOOP."""
        return lethe_pb2.OperationKind.Name(self.metadata.kind).removeprefix("OPERATION_KIND_")

    @property
    def progress(self) -> float:
        """In [0, 1]: 0 until its tasks are planned, then the share of them done."""
        return self.metadata.progress

    @property
    def message(self) -> operations_pb2.Operation:
        """The google.longrunning.Operation as last received."""
        return self._message

    def refresh(self) -> "Operation":
        self._message = call(
            lambda: self._client._operations.GetOperation(
                operations_pb2.GetOperationRequest(name=self.name),
                metadata=self._client._metadata,
                timeout=self._client.timeout,
            ),
            self._client.backoff,
            idempotent=True,
        )
        return self

    def watch(self) -> Iterator["Operation"]:
        """This operation each time its state or progress changes, until it is done. A
        stream the server ends early (it caps a watch at an hour) is opened again."""
        failures = 0
        while True:
            stream = self._client._lethe.WatchOperation(
                lethe_pb2.WatchOperationRequest(name=self.name), metadata=self._client._metadata
            )
            try:
                for message in stream:
                    failures = 0
                    self._message = message
                    yield self
            except grpc.RpcError as raw:
                # A dropped connection is watched again, as patiently as a retried call.
                error = from_rpc_error(raw)
                failures += 1
                if error.code != grpc.StatusCode.UNAVAILABLE or failures >= self._client.backoff.attempts:
                    raise error from None
                time.sleep(self._client.backoff.delay(failures - 1, error))
                continue
            if self.done:
                return

    def wait(self, timeout: float | None = None, progress: bool = False) -> "Operation":
        """Blocks until the operation is done (or `timeout` seconds pass: TimeoutError). With
        `progress=True`, a tqdm bar follows it (`pip install lethe-client[progress]`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if progress:
            return self._wait_with_bar(deadline)
        while not self.done:
            remaining = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name} is not done after {timeout} s ({self.state})")
            wait = min(_WAIT_SLICE, remaining)
            seconds, fraction = divmod(wait, 1.0)
            request = operations_pb2.WaitOperationRequest(
                name=self.name,
                timeout=duration_pb2.Duration(seconds=int(seconds), nanos=int(fraction * 1e9)),
            )
            self._message = call(
                lambda: self._client._operations.WaitOperation(
                    request, metadata=self._client._metadata, timeout=wait + self._client.timeout
                ),
                self._client.backoff,
                idempotent=True,
            )
        return self

    def _wait_with_bar(self, deadline: float | None) -> "Operation":
        from tqdm import tqdm

        with tqdm(total=1.0, desc=self.name, unit="", bar_format="{l_bar}{bar}| {postfix}") as bar:
            for seen in self.watch():
                bar.n = seen.progress
                bar.set_postfix_str(seen.state.lower())
                if seen.done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} is not done ({self.state})")
        return self

    def cancel(self) -> "Operation":
        """Asks for the operation to be cancelled, then reads it again. A deletion request
        that shares its run with other live requests cannot be withdrawn
        (FailedPrecondition)."""
        call(
            lambda: self._client._operations.CancelOperation(
                operations_pb2.CancelOperationRequest(name=self.name),
                metadata=self._client._metadata,
                timeout=self._client.timeout,
            ),
            self._client.backoff,
            idempotent=True,
        )
        return self.refresh()

    def result(self) -> Result:
        """The typed result of a succeeded operation: a `DeletionResult` (the new version, its
        URI and SHA-256, the audit), an `IndexBuildResult` or a `NoopResult`. A failed or
        cancelled one raises `OperationFailed`; one still running `OperationNotDone`."""
        if not self.done:
            raise OperationNotDone(f"{self.name} is {self.state}: wait() for it first")
        if self._message.HasField("error"):
            raise from_status(self._message.error)
        response = self._message.response
        type_name = response.type_url.rsplit("/", 1)[-1]
        kind = _RESULT_TYPES.get(type_name)
        if kind is None:
            raise TypeError(f"{self.name} responded with {type_name}, which this client does not know")
        result = kind()
        response.Unpack(result)
        return result
