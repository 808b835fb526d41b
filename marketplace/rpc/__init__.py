"""Generated gRPC code of the worker API (``proto/flopex/v1/worker.proto``), shared by client and worker.

Import ``marketplace.rpc.worker_pb2`` and ``marketplace.rpc.worker_pb2_grpc``; regenerate them with
``python -m marketplace.rpc.generate``. This package module imports nothing, so the generator runs
even when the generated files are missing.
"""

from __future__ import annotations

__all__ = ["SERVICE_NAME"]

SERVICE_NAME = "flopex.v1.WorkerService"
"""Fully qualified name of the service."""
