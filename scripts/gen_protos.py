"""Regenerate gen/ (Python stubs and the descriptor image) from protos/.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: gen/)

The descriptor image (``sluice.binpb``) feeds ``buf lint`` and Envoy's
grpc_json_transcoder, so every consumer reads the same compiled contract.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DESCRIPTOR_NAME = "sluice.binpb"
# Error detail types are not imported by our protos, but Envoy's transcoder must know
# them to render google.rpc.Status details as JSON, so the image carries them too.
EXTRA_DESCRIPTOR_SOURCES = ("google/rpc/error_details.proto", "google/rpc/status.proto")
# Third-party contracts we serve (Envoy's rate limit service, under sluice/vendor/ so
# their stubs import as sluice.vendor.*) get stubs but stay out of the image: the image
# is our own API (transcoder, buf lint).
VENDORED = "sluice/vendor/"


def _include_dirs() -> list[str]:
    """Proto include roots: ours, googleapis-common-protos, protobuf's well-known types."""
    from google.api import annotations_pb2  # noqa: PLC0415 - locates the googleapis sources

    googleapis_root = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    return [str(PROTOS), str(googleapis_root), str(well_known)]


def generate(out_dir: Path) -> None:
    """Write stubs and the descriptor image for every proto under protos/ into out_dir."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    includes = [f"-I{d}" for d in _include_dirs()]
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        stubs = [
            "grpc_tools.protoc",
            *includes,
            f"--python_out={staging}",
            f"--pyi_out={staging}",
            f"--grpc_python_out={staging}",
            *sources,
        ]
        image = [
            "grpc_tools.protoc",
            *includes,
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={staging / DESCRIPTOR_NAME}",
            *(s for s in sources if not s.startswith(VENDORED)),
            *EXTRA_DESCRIPTOR_SOURCES,
        ]
        if protoc.main(stubs) != 0 or protoc.main(image) != 0:
            raise SystemExit("protoc failed")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(staging, out_dir)


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "gen"
    generate(out_dir)
    print(f"generated {out_dir}")


if __name__ == "__main__":
    main()
