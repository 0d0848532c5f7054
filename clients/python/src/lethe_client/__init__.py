"""Lethe's Python client: make trained models forget, from your own services.

    from lethe_client import Client

    client = Client("lethe.internal:50051", token=os.environ["LETHE_TOKEN"])
    op = client.forget("fashion", [17, 2041, 9000], request_id="gdpr-4711")
    result = op.wait(progress=True).result()        # a lethe.v1.DeletionResult
    client.download(result.version, "fashion-v1.safetensors")

Results are the typed messages of `lethe.v1` (`lethe.v1.results_pb2`), generated from the
service's proto/ when this package is built; errors are the classes of `lethe_client.errors`.
"""

from ._retry import Backoff
from .client import Client
from .errors import (
    AlreadyExists,
    AuthenticationError,
    FailedPrecondition,
    InvalidArgument,
    LetheError,
    NotFound,
    OperationFailed,
    Unavailable,
)
from .operation import Operation, OperationNotDone

__all__ = [
    "AlreadyExists",
    "AuthenticationError",
    "Backoff",
    "Client",
    "FailedPrecondition",
    "InvalidArgument",
    "LetheError",
    "NotFound",
    "Operation",
    "OperationFailed",
    "OperationNotDone",
    "Unavailable",
]
