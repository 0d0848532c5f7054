"""The public API as a Python team meets it: stubs generated from proto/ with grpcio-tools
(nothing of Lethe's Rust code on this side), google.longrunning and google.rpc from
googleapis-common-protos, against a coordinator that the harness started.

The harness (crates/lethe-worker/tests/conformance.rs, in `make test`) sets:
  LETHE_COORDINATOR    host:port of the coordinator (plaintext)
  LETHE_TOKEN          an API token of tenant acme
  LETHE_OTHER_TOKEN    an API token of tenant globex
  LETHE_ARTIFACTS      the artifact store's file:// URL, which the coordinator serves
  LETHE_MODEL          the file:// URL of a checkpoint trained on fmnist-tiny, in that store
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import grpc
import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]
PROTO = REPOSITORY / "proto"


def _generate_stubs() -> pathlib.Path:
    out = pathlib.Path(tempfile.mkdtemp(prefix="lethe-stubs-"))
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "lethe" / "v1").glob("*.proto"))
    # Only Lethe's own files: google/longrunning and google/rpc are googleapis-common-protos'
    # (a second generated copy would clash with it at import).
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}",
         f"--python_out={out}", f"--grpc_python_out={out}", *protos],
        check=True,
    )
    return out


sys.path.insert(0, str(_generate_stubs()))


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run these tests through `cargo test -p lethe-worker "
                    f"--test conformance` (or make test), which starts the stack", returncode=2)
    return value


@pytest.fixture(scope="session")
def channel():
    with grpc.insecure_channel(_required("LETHE_COORDINATOR")) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


@pytest.fixture(scope="session")
def token() -> str:
    return _required("LETHE_TOKEN")


@pytest.fixture(scope="session")
def other_token() -> str:
    return _required("LETHE_OTHER_TOKEN")


@pytest.fixture(scope="session")
def artifacts() -> str:
    return _required("LETHE_ARTIFACTS")


@pytest.fixture(scope="session")
def model_uri() -> str:
    return _required("LETHE_MODEL")
