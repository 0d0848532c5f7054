"""lethe_client against a real coordinator, PostgreSQL and worker that the harness started
(crates/lethe-worker/tests/python_client.rs, in `make test`), which sets LETHE_COORDINATOR,
LETHE_TOKEN (tenant acme), LETHE_OTHER_TOKEN (tenant globex) and LETHE_MODEL (a checkpoint
trained on fmnist-tiny, in the coordinator's artifact store)."""

import concurrent.futures
import hashlib
import os

import grpc
import pytest
from google.rpc import error_details_pb2
from lethe.v1 import results_pb2

from lethe_client import (
    AlreadyExists,
    AuthenticationError,
    Client,
    InvalidArgument,
    NotFound,
    OperationFailed,
    OperationNotDone,
)

MODEL = "shoes"


def required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run `cargo test -p lethe-worker --test python_client`", returncode=2)
    return value


@pytest.fixture(scope="module")
def client():
    with Client(required("LETHE_COORDINATOR"), token=required("LETHE_TOKEN")) as client:
        yield client


@pytest.fixture(scope="module")
def other():
    with Client(required("LETHE_COORDINATOR"), token=required("LETHE_OTHER_TOKEN")) as client:
        yield client


@pytest.fixture(scope="module")
def indexed(client):
    """fmnist-tiny and the model registered, and the model's index built."""
    model_uri = required("LETHE_MODEL")
    with open(model_uri.removeprefix("file://"), "rb") as checkpoint:
        sha256 = hashlib.sha256(checkpoint.read()).hexdigest()
    client.register_dataset("fmnist-tiny", "builtin:fmnist-tiny")
    client.register_model(MODEL, "fmnist-tiny", model_uri, sha256=sha256)
    # Registering the same again is a no-op, not an error.
    assert client.register_model(MODEL, "fmnist-tiny", model_uri, sha256=sha256).name == f"models/{MODEL}"
    index = client.build_index(MODEL, members=64, members_per_task=32).wait(timeout=600)
    result = index.result()
    assert isinstance(result, results_pb2.IndexBuildResult) and result.index.uri
    return result


def test_the_happy_path_forgets_audits_and_downloads(client, indexed, tmp_path):
    operation = client.forget(MODEL, [3, 5, 8, 13, 21], audit_oracles=4)
    assert operation.kind == "DELETION" and operation.state == "QUEUED"
    with pytest.raises(OperationNotDone):
        operation.result()
    states = [seen.state for seen in operation.watch()]
    assert states[-1] == "SUCCEEDED" and operation.done
    result = operation.result()
    assert isinstance(result, results_pb2.DeletionResult)
    version = result.version
    assert version.name == f"models/{MODEL}/versions/1" and len(version.sha256) == 32
    assert result.method == results_pb2.DELETION_METHOD_DMM and result.requested == 5
    audit = result.audit
    assert audit.oracles == 4 and audit.result.models == 4 and audit.result.oracles == 4
    assert audit.result.forget.klom.points == 5 and audit.do_nothing.forget.klom.points == 5
    assert audit.HasField("noise_floor")
    assert [v.version for v in client.versions(MODEL)] == [1, 0]
    path = tmp_path / "shoes-v1.safetensors"
    header = client.download(version, path)
    assert header.name == version.name
    assert hashlib.sha256(path.read_bytes()).digest() == version.sha256
    assert not (tmp_path / "shoes-v1.safetensors.partial").exists()


def test_a_progress_bar_follows_a_wait(client, indexed, capsys):
    operation = client.forget(MODEL, [34, 55])
    assert operation.wait(timeout=600, progress=True).state == "SUCCEEDED"
    assert operation.name in capsys.readouterr().err


def test_one_request_id_from_twenty_threads_is_one_operation(client, indexed):
    def submit(_):
        return client.forget(MODEL, [89, 144], request_id="gdpr-4711").name

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        names = set(pool.map(submit, range(20)))
    assert len(names) == 1, names
    with pytest.raises(AlreadyExists) as reused:
        client.forget(MODEL, [89, 145], request_id="gdpr-4711")
    assert reused.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert reused.value.reason == "REQUEST_ID_REUSED"
    client.operation(names.pop()).wait(timeout=600)


def test_another_tenant_sees_nothing(client, other, indexed):
    operation = client.forget(MODEL, [233])
    with pytest.raises(NotFound):
        other.operation(operation.name)
    with pytest.raises(NotFound):
        other.versions(MODEL)
    with pytest.raises(NotFound):
        other.download(f"models/{MODEL}/versions/0", "/tmp/never")
    operation.wait(timeout=600)


def test_a_cancelled_request_ends_cancelled(client, indexed):
    operation = client.forget(MODEL, [377]).cancel()
    assert operation.wait(timeout=60).state == "CANCELLED"
    with pytest.raises(OperationFailed) as failed:
        operation.result()
    assert failed.value.code == grpc.StatusCode.CANCELLED and failed.value.reason == "CANCELLED"


def test_a_bad_token_is_an_authentication_error():
    with Client(required("LETHE_COORDINATOR"), token="not-a-token") as stranger:
        with pytest.raises(AuthenticationError) as refused:
            stranger.versions(MODEL)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "indices, problem",
    [([10**9], "outside the training set"), ([-1], "outside the training set"), ([4, 4], "more than once"), ([], "1 to")],
)
def test_bad_indices_are_invalid_arguments_naming_the_field(client, indexed, indices, problem):
    with pytest.raises(InvalidArgument) as refused:
        client.forget(MODEL, indices)
    assert problem in refused.value.message
    violation = refused.value.detail(error_details_pb2.BadRequest).field_violations[0]
    assert violation.field == "forget"
