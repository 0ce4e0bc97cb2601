"""Type names for grpc objects (grpc ships no type information; these document intent)."""

from typing import TypeAlias

import grpc

ServicerContext: TypeAlias = grpc.aio.ServicerContext
"""The context grpc.aio passes to every servicer method."""
