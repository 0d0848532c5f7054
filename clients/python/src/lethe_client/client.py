"""`Client`: Lethe's public API for a platform team's Python services."""

from __future__ import annotations

import hashlib
import os
import pathlib
import uuid
from typing import Iterable, Iterator, Sequence, Union

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from lethe.v1 import lethe_pb2, lethe_pb2_grpc

from ._retry import Backoff, call
from .errors import InvalidArgument, LetheError, from_rpc_error
from .operation import Operation

PathLike = Union[str, os.PathLike]
VersionRef = Union[str, lethe_pb2.ModelVersion]

_ESTIMATORS = {
    "subsample": lethe_pb2.INDEX_ESTIMATOR_SUBSAMPLE,
    "trak": lethe_pb2.INDEX_ESTIMATOR_TRAK,
}


def _name(collection: str, ref: str) -> str:
    """`models/x` from `x` or `models/x`."""
    return ref if ref.startswith(f"{collection}/") else f"{collection}/{ref}"


def _hash(sha256: bytes | str | None) -> bytes:
    if sha256 is None:
        return b""
    if isinstance(sha256, str):
        try:
            sha256 = bytes.fromhex(sha256)
        except ValueError:
            raise ValueError("sha256 must be 32 bytes or 64 hex digits") from None
    if len(sha256) != 32:
        raise ValueError("sha256 must be 32 bytes or 64 hex digits")
    return sha256


def _target(coordinator: str) -> tuple[str, bool]:
    """The gRPC target and whether the address asked for TLS."""
    if coordinator.startswith("https://"):
        return coordinator.removeprefix("https://").rstrip("/"), True
    return coordinator.removeprefix("http://").rstrip("/"), False


class Client:
    """A connection to a Lethe coordinator, acting for the tenant that `token` belongs to.

        client = Client("lethe.internal:50051", token=os.environ["LETHE_TOKEN"])
        op = client.forget("fashion", [17, 2041], request_id="gdpr-4711")
        result = op.wait(progress=True).result()
        client.download(result.version, "fashion-v1.safetensors")

    `coordinator` is `host:port`, `http://host:port`, or `https://host:port` (TLS with the
    system's roots, or with the PEM CA `tls_ca`: a path or its bytes). `tenant` is only for
    coordinators that trust the `x-lethe-tenant` header instead of tokens. Calls time out
    after `timeout` seconds (waits and watches have their own bounds). Idempotent calls are
    retried on UNAVAILABLE and RESOURCE_EXHAUSTED with jittered backoff (`backoff`); a create
    without a `request_id` gets a random one, so that its retries are idempotent too.
    """

    def __init__(
        self,
        coordinator: str,
        token: str | None = None,
        tls_ca: PathLike | bytes | None = None,
        *,
        tenant: str | None = None,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
    ):
        target, wants_tls = _target(coordinator)
        if tls_ca is not None or wants_tls:
            root = tls_ca
            if root is not None and not isinstance(root, bytes):
                root = pathlib.Path(root).read_bytes()
            credentials = grpc.ssl_channel_credentials(root_certificates=root)
            self._channel = grpc.secure_channel(target, credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        metadata = []
        if token:
            metadata.append(("authorization", f"Bearer {token.strip()}"))
        if tenant:
            metadata.append(("x-lethe-tenant", tenant))
        self._metadata = tuple(metadata)
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self._lethe = lethe_pb2_grpc.LetheStub(self._channel)
        self._operations = operations_pb2_grpc.OperationsStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _unary(self, method, request, *, idempotent: bool):
        return call(
            lambda: method(request, metadata=self._metadata, timeout=self.timeout),
            self.backoff,
            idempotent,
        )

    # ---- Datasets and models ---------------------------------------------------------------

    def register_dataset(
        self, dataset_id: str, uri: str, sha256: bytes | str | None = None
    ) -> lethe_pb2.Dataset:
        """Registers a dataset by URL (`builtin:fmnist-tiny`, `s3://...`, `file:///...`).
        Registering the same again returns it; another URL or hash is `AlreadyExists`."""
        request = lethe_pb2.RegisterDatasetRequest(dataset_id=dataset_id, uri=uri, sha256=_hash(sha256))
        return self._unary(self._lethe.RegisterDataset, request, idempotent=True)

    def register_model(
        self, model_id: str, dataset: str, uri: str, sha256: bytes | str | None = None
    ) -> lethe_pb2.Model:
        """Registers a model trained on `dataset`: it becomes version 0."""
        request = lethe_pb2.RegisterModelRequest(
            model_id=model_id, dataset=_name("datasets", dataset), uri=uri, sha256=_hash(sha256)
        )
        return self._unary(self._lethe.RegisterModel, request, idempotent=True)

    def dataset(self, dataset: str) -> lethe_pb2.Dataset:
        request = lethe_pb2.GetDatasetRequest(name=_name("datasets", dataset))
        return self._unary(self._lethe.GetDataset, request, idempotent=True)

    def model(self, model: str) -> lethe_pb2.Model:
        request = lethe_pb2.GetModelRequest(name=_name("models", model))
        return self._unary(self._lethe.GetModel, request, idempotent=True)

    def versions(self, model: str) -> list[lethe_pb2.ModelVersion]:
        """A model's versions, newest first; version 0 is the registered model."""
        request = lethe_pb2.ListModelVersionsRequest(model=_name("models", model))
        return list(self._unary(self._lethe.ListModelVersions, request, idempotent=True).versions)

    # ---- Work ------------------------------------------------------------------------------

    def build_index(
        self,
        model: str,
        *,
        members: int = 0,
        alpha: float = 0.0,
        members_per_task: int = 0,
        seed: int = 0,
        estimator: str = "subsample",
        request_id: str | None = None,
        priority: int = 0,
    ) -> Operation:
        """Builds the attribution index DMM predicts from (`members` subset retrains, 0 means
        128; `estimator` "subsample" or "trak"). Returns the operation at once."""
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(_ESTIMATORS)}, not {estimator!r}")
        request = lethe_pb2.CreateIndexBuildRequest(
            request_id=request_id or str(uuid.uuid4()),
            model=_name("models", model),
            members=members,
            alpha=alpha,
            members_per_task=members_per_task,
            seed=seed,
            priority=priority,
            estimator=_ESTIMATORS[estimator],
        )
        return Operation(self, self._unary(self._lethe.CreateIndexBuild, request, idempotent=True))

    def forget(
        self,
        model: str,
        indices: Iterable[int],
        *,
        request_id: str | None = None,
        audit_oracles: int = 0,
        seed: int = 0,
        priority: int = 0,
        min_confidence: float | None = None,
    ) -> Operation:
        """Asks for training examples `indices` of `model` to be forgotten. The same
        `request_id` again returns the first operation (AIP-155); with a different request it
        is `AlreadyExists` (reason REQUEST_ID_REUSED). `audit_oracles` > 0 audits the run
        against that many retrains (80 or more for a stable figure)."""
        forget: Sequence[int] = [int(i) for i in indices]
        request = lethe_pb2.CreateDeletionRequestRequest(
            request_id=request_id or str(uuid.uuid4()),
            model=_name("models", model),
            forget=forget,
            audit_oracles=audit_oracles,
            seed=seed,
            priority=priority,
            min_confidence=min_confidence,
        )
        return Operation(self, self._unary(self._lethe.CreateDeletionRequest, request, idempotent=True))

    def operation(self, name: str) -> Operation:
        """The operation `operations/{uuid}` as it is now."""
        request = operations_pb2.GetOperationRequest(name=name)
        return Operation(self, self._unary(self._operations.GetOperation, request, idempotent=True))

    def operations(self, filter: str = "", page_size: int = 0) -> Iterator[Operation]:
        """Every operation of the tenant, newest first, page by page (`filter`:
        `state=RUNNING AND kind=DELETION`)."""
        token = ""
        while True:
            request = operations_pb2.ListOperationsRequest(filter=filter, page_size=page_size, page_token=token)
            page = self._unary(self._operations.ListOperations, request, idempotent=True)
            for message in page.operations:
                yield Operation(self, message)
            token = page.next_page_token
            if not token:
                return

    # ---- Getting a version out -------------------------------------------------------------

    def download(self, version: VersionRef, path: PathLike) -> lethe_pb2.ModelVersion:
        """Writes the checkpoint of `version` (a `ModelVersion` or its name,
        `models/{id}/versions/{n}`) to `path`, streamed through the coordinator. The file
        appears only once its SHA-256 matches the coordinator's and the recorded one."""
        name = version if isinstance(version, str) else version.name
        path = pathlib.Path(path)
        partial = path.with_name(path.name + ".partial")
        try:
            header = self._stream_to(name, partial)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)
        return header

    def _stream_to(self, name: str, partial: pathlib.Path) -> lethe_pb2.ModelVersion:
        header, sent, digest, size = None, None, hashlib.sha256(), 0
        chunks = self._lethe.DownloadModelVersion(
            lethe_pb2.DownloadModelVersionRequest(name=name), metadata=self._metadata
        )
        try:
            with open(partial, "wb") as out:
                for chunk in chunks:
                    if chunk.HasField("version"):
                        header = chunk.version
                    if chunk.offset != size:
                        raise LetheError(grpc.StatusCode.DATA_LOSS, f"bytes at {chunk.offset} after {size}")
                    digest.update(chunk.data)
                    out.write(chunk.data)
                    size += len(chunk.data)
                    if chunk.sha256:
                        sent = chunk.sha256
        except grpc.RpcError as raw:
            raise from_rpc_error(raw) from None
        if header is None or sent != digest.digest():
            raise LetheError(grpc.StatusCode.DATA_LOSS, f"the download of {name} arrived incomplete")
        if header.sha256 and header.sha256 != digest.digest():
            raise LetheError(grpc.StatusCode.DATA_LOSS, f"{name} is not the recorded checkpoint")
        return header

    def download_url(self, version: VersionRef, lifetime: float | None = None) -> lethe_pb2.ModelVersionDownloadUrl:
        """A URL that GETs the checkpoint without credentials for `lifetime` seconds (default
        15 minutes, at most an hour): only for coordinators whose artifact store is s3://."""
        name = version if isinstance(version, str) else version.name
        request = lethe_pb2.GetModelVersionDownloadUrlRequest(name=name)
        if lifetime is not None:
            if lifetime < 0:
                raise InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, "lifetime must not be negative")
            request.lifetime.CopyFrom(duration_pb2.Duration(seconds=int(lifetime), nanos=int(lifetime % 1 * 1e9)))
        return self._unary(self._lethe.GetModelVersionDownloadUrl, request, idempotent=True)
