"""Where the compiled contract image is: the transcoder and the OpenAPI route read it."""

from __future__ import annotations

from pathlib import Path

from sluice.common.v1 import common_pb2


def descriptor_path() -> Path:
    """The compiled contract image (gen/sluice.binpb in a checkout, packaged in a wheel)."""
    stub = Path(common_pb2.__file__).resolve()
    for candidate in (
        stub.parents[3] / "sluice.binpb",
        stub.parents[2] / "_descriptors" / "sluice.binpb",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("sluice.binpb not found; run `make gen`")
