"""What a Python client of the public API can count on (docs/service.md): names, limits,
errors, progress, typed results and getting a model version out. One module, run in order:
the happy path builds the index and the version the later cases read."""

import hashlib
import time
import uuid

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lethe.v1 import lethe_pb2, lethe_pb2_grpc, results_pb2

MODEL = "shoes"
MIB = 1 << 20
# What a status may weigh in the trailers: clients cap headers at 8 to 16 KiB.
SHORT = 2048


def auth(token: str, scheme: str = "Bearer"):
    return (("authorization", f"{scheme} {token}"),)


def refusal(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)
    return raised.value


def rich_status(error: grpc.RpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return status_pb2.Status()


def detail(error: grpc.RpcError, kind):
    for any_detail in rich_status(error).details:
        message = kind()
        if any_detail.Unpack(message):
            return message
    return None


@pytest.fixture(scope="module")
def lethe(channel):
    return lethe_pb2_grpc.LetheStub(channel)


@pytest.fixture(scope="module")
def operations(channel):
    return operations_pb2_grpc.OperationsStub(channel)


def wait(operations, name: str, token: str, within: float = 600) -> operations_pb2.Operation:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        operation = operations.WaitOperation(
            operations_pb2.WaitOperationRequest(name=name, timeout=duration_pb2.Duration(seconds=30)),
            metadata=auth(token),
        )
        if operation.done:
            return operation
    pytest.fail(f"{name} was not done within {within} s")


def metadata_of(operation) -> lethe_pb2.OperationMetadata:
    metadata = lethe_pb2.OperationMetadata()
    assert operation.metadata.Unpack(metadata), operation.metadata.type_url
    return metadata


def response_of(operation, kind):
    assert operation.HasField("response"), operation
    result = kind()
    assert operation.response.Unpack(result), operation.response.type_url
    return result


# ---- The happy path, and the names, results and progress it shows ------------------------


@pytest.fixture(scope="module")
def deleted(lethe, operations, token, model_uri):
    """Registers fmnist-tiny and the model, builds its index and runs one deletion request."""
    lethe.RegisterDataset(
        lethe_pb2.RegisterDatasetRequest(dataset_id="fmnist-tiny", uri="builtin:fmnist-tiny"),
        metadata=auth(token),
    )
    lethe.RegisterModel(
        lethe_pb2.RegisterModelRequest(model_id=MODEL, dataset="datasets/fmnist-tiny", uri=model_uri),
        metadata=auth(token),
    )
    index = lethe.CreateIndexBuild(
        lethe_pb2.CreateIndexBuildRequest(model=f"models/{MODEL}", members=64, members_per_task=32),
        metadata=auth(token),
    )
    index = wait(operations, index.name, token)
    request = lethe.CreateDeletionRequest(
        lethe_pb2.CreateDeletionRequestRequest(model=f"models/{MODEL}", forget=[3, 5, 8, 13, 21]),
        metadata=auth(token),
    )
    return index, request, wait(operations, request.name, token)


def test_a_queued_deletion_has_no_progress_until_its_run_is_planned(deleted):
    _, queued, _ = deleted
    metadata = metadata_of(queued)
    assert metadata.state == lethe_pb2.OPERATION_STATE_QUEUED
    assert metadata.tasks.total == 0
    assert metadata.progress == 0.0


def test_the_index_build_result_names_its_artifacts(deleted):
    index, _, _ = deleted
    result = response_of(index, results_pb2.IndexBuildResult)
    assert result.index.uri.startswith("file://") and len(result.index.sha256) == 32
    assert result.index.size_bytes > 0
    assert result.report.noise_model and result.noise_model.uri and len(result.noise_model.sha256) == 32
    assert result.report.estimation_models == 64 and result.report.members == 64
    assert result.report.num_train > 0 and len(result.report.dataset_sha256) == 64


def test_names_are_full_resource_names_everywhere(lethe, operations, token, deleted):
    _, request, done = deleted
    assert request.name.startswith("operations/")
    result = response_of(done, results_pb2.DeletionResult)
    metadata = metadata_of(done)
    assert result.run.startswith("operations/") and result.run == metadata.run
    run = operations.GetOperation(operations_pb2.GetOperationRequest(name=result.run), metadata=auth(token))
    assert run.done and metadata_of(run).kind == lethe_pb2.OPERATION_KIND_DELETION_RUN
    assert result.version.name == f"models/{MODEL}/versions/1"
    assert result.version.run == result.run
    versions = lethe.ListModelVersions(
        lethe_pb2.ListModelVersionsRequest(model=f"models/{MODEL}"), metadata=auth(token)
    ).versions
    assert [v.name for v in versions] == [f"models/{MODEL}/versions/1", f"models/{MODEL}/versions/0"]
    assert versions[1].run == ""
    # The bare UUID is not a name: the refusal says which form is.
    bare = refusal(operations.GetOperation, operations_pb2.GetOperationRequest(name=result.run.split("/")[1]),
                   metadata=auth(token))
    assert bare.code() == grpc.StatusCode.INVALID_ARGUMENT and "operations/{uuid}" in bare.details()


def test_a_deletion_result_is_typed_and_complete(deleted):
    _, _, done = deleted
    result = response_of(done, results_pb2.DeletionResult)
    assert result.method == results_pb2.DELETION_METHOD_DMM
    assert result.from_version == 0 and result.requested == 5 and result.forgotten_in_run == 5
    assert result.version.version == 1 and result.version.forgotten_count == 5
    assert result.version.uri and len(result.version.sha256) == 32 and result.version.size_bytes > 0
    assert result.HasField("matching") and not result.HasField("audit")
    metadata = metadata_of(done)
    assert metadata.state == lethe_pb2.OPERATION_STATE_SUCCEEDED and metadata.progress == 1.0


# ---- Getting the model out -----------------------------------------------------------------


def download(lethe, name: str, token: str):
    header, data, trailer = None, bytearray(), None
    for chunk in lethe.DownloadModelVersion(lethe_pb2.DownloadModelVersionRequest(name=name), metadata=auth(token)):
        if chunk.HasField("version"):
            header = chunk.version
        assert chunk.offset == len(data)
        assert len(chunk.data) <= MIB
        data += chunk.data
        if chunk.sha256:
            trailer = chunk.sha256
    return header, bytes(data), trailer


def test_a_version_downloads_through_the_coordinator_checked(lethe, token, deleted):
    _, _, done = deleted
    version = response_of(done, results_pb2.DeletionResult).version
    header, data, trailer = download(lethe, version.name, token)
    assert header.name == version.name and header.sha256 == version.sha256
    assert len(data) == version.size_bytes
    assert hashlib.sha256(data).digest() == version.sha256 == trailer


def test_the_registered_model_is_version_0_and_downloads_too(lethe, token, deleted, model_uri):
    header, data, trailer = download(lethe, f"models/{MODEL}/versions/0", token)
    assert header.version == 0 and header.uri == model_uri
    assert hashlib.sha256(data).digest() == trailer
    with open(model_uri.removeprefix("file://"), "rb") as registered:
        assert registered.read() == data


def test_another_tenants_version_is_not_found(lethe, other_token, deleted):
    error = refusal(download, lethe, f"models/{MODEL}/versions/1", other_token)
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_a_version_that_does_not_exist_is_not_found(lethe, token, deleted):
    error = refusal(download, lethe, f"models/{MODEL}/versions/7", token)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    for malformed in [f"models/{MODEL}", f"models/{MODEL}/versions/x", "versions/1"]:
        error = refusal(download, lethe, malformed, token)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, malformed


def test_an_altered_checkpoint_ends_the_stream_with_data_loss(lethe, token, artifacts, model_uri, deleted):
    lethe.RegisterModel(
        lethe_pb2.RegisterModelRequest(model_id="altered", dataset="datasets/fmnist-tiny",
                                       uri=model_uri, sha256=b"\x01" * 32),
        metadata=auth(token),
    )
    error = refusal(download, lethe, "models/altered/versions/0", token)
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert detail(error, error_details_pb2.ErrorInfo).reason == "CHECKPOINT_UNREADABLE"


def test_signed_urls_need_an_s3_store_and_a_bounded_lifetime(lethe, token, deleted):
    name = f"models/{MODEL}/versions/1"
    error = refusal(lethe.GetModelVersionDownloadUrl,
                    lethe_pb2.GetModelVersionDownloadUrlRequest(name=name), metadata=auth(token))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert detail(error, error_details_pb2.ErrorInfo).reason == "URL_SIGNING_UNSUPPORTED"
    too_long = lethe_pb2.GetModelVersionDownloadUrlRequest(name=name, lifetime=duration_pb2.Duration(seconds=7200))
    error = refusal(lethe.GetModelVersionDownloadUrl, too_long, metadata=auth(token))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "lifetime" in error.details()


# ---- Limits and errors ---------------------------------------------------------------------


def test_values_of_any_size_are_refused_with_a_short_message(lethe, operations, token):
    huge = "a" * MIB
    metadata = auth(token)
    calls = {
        "dataset_id": lambda: lethe.RegisterDataset(
            lethe_pb2.RegisterDatasetRequest(dataset_id=huge, uri="builtin:fmnist-tiny"), metadata=metadata),
        "uri": lambda: lethe.RegisterDataset(
            lethe_pb2.RegisterDatasetRequest(dataset_id="d", uri="file:///" + huge), metadata=metadata),
        "model_id": lambda: lethe.RegisterModel(
            lethe_pb2.RegisterModelRequest(model_id=huge, dataset="datasets/fmnist-tiny", uri="file:///m"),
            metadata=metadata),
        "model name": lambda: lethe.GetModel(lethe_pb2.GetModelRequest(name="models/" + huge), metadata=metadata),
        "dataset name": lambda: lethe.GetDataset(lethe_pb2.GetDatasetRequest(name=huge), metadata=metadata),
        "request_id": lambda: lethe.CreateNoopOperation(
            lethe_pb2.CreateNoopOperationRequest(request_id=huge, tasks=1), metadata=metadata),
        "operation name": lambda: operations.GetOperation(
            operations_pb2.GetOperationRequest(name="operations/" + huge), metadata=metadata),
        "version name": lambda: list(lethe.DownloadModelVersion(
            lethe_pb2.DownloadModelVersionRequest(name=huge), metadata=metadata)),
    }
    for field, call in calls.items():
        error = refusal(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error.code(), error.details()[:200])
        assert len(error.details()) < SHORT, (field, len(error.details()))


def test_a_forget_set_past_the_policy_is_refused_naming_the_limit(lethe, token, deleted):
    over_policy = lethe_pb2.CreateDeletionRequestRequest(model=f"models/{MODEL}", forget=range(100_001))
    error = refusal(lethe.CreateDeletionRequest, over_policy, metadata=auth(token))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "100000" in error.details()
    assert detail(error, error_details_pb2.BadRequest).field_violations[0].field == "forget"
    # Past what any call accepts, the transport's own refusal is turned into the same code,
    # naming both limits.
    over_transport = lethe_pb2.CreateDeletionRequestRequest(model=f"models/{MODEL}", forget=range(10_000_000))
    error = refusal(lethe.CreateDeletionRequest, over_transport, metadata=auth(token))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert "4 MiB" in error.details() and "100000" in error.details()


def test_the_bearer_scheme_is_case_insensitive(operations, token):
    for scheme in ["Bearer", "bearer", "BEARER"]:
        operations.ListOperations(operations_pb2.ListOperationsRequest(), metadata=auth(token, scheme))
    error = refusal(operations.ListOperations, operations_pb2.ListOperationsRequest(), metadata=auth(token, "Basic"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = refusal(operations.ListOperations, operations_pb2.ListOperationsRequest(), metadata=auth("nope"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_another_tenants_operation_is_not_found(operations, other_token, deleted):
    _, request, _ = deleted
    error = refusal(operations.GetOperation, operations_pb2.GetOperationRequest(name=request.name),
                    metadata=auth(other_token))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    missing = refusal(operations.GetOperation, operations_pb2.GetOperationRequest(name=f"operations/{uuid.uuid4()}"),
                      metadata=auth(other_token))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


# ---- Reflection ----------------------------------------------------------------------------


def test_reflection_v1alpha_lists_and_describes_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="lethe.v1.Lethe"),
    ]
    listed, described = list(stub.ServerReflectionInfo(iter(requests)))
    services = {service.name for service in listed.list_services_response.service}
    assert {"lethe.v1.Lethe", "google.longrunning.Operations", "grpc.health.v1.Health"} <= services
    assert described.file_descriptor_response.file_descriptor_proto
