"""Regenerate the TypeScript stubs of the public API (clients/typescript/src/gen/).

Usage: python scripts/gen_ts_client.py [OUT_DIR]   (default: clients/typescript/src/gen/)

protoc (grpc_tools) runs the protoc-gen-es plugin pinned in clients/typescript's
package-lock.json (`make js-deps` installs it) over the router's contract and what it
imports, plus google.rpc's error details so a client can read an error's ErrorInfo.
tests/docs/test_typescript_client.py fails when the committed stubs are stale.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "typescript"
PLUGIN = CLIENT / "node_modules" / ".bin" / "protoc-gen-es"
SOURCES = (
    "sluice/router/v1/router.proto",
    "sluice/common/v1/common.proto",
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/rpc/error_details.proto",
)


def _include_dirs() -> list[str]:
    from google.api import annotations_pb2  # noqa: PLC0415 - locates the googleapis sources

    googleapis_root = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    return [str(ROOT / "protos"), str(googleapis_root), str(well_known)]


def generate(out_dir: Path) -> None:
    """Write the TypeScript stubs into out_dir (replacing what is there)."""
    if not PLUGIN.is_file():
        raise SystemExit(f"{PLUGIN} is missing: run `make js-deps`")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            *(f"-I{d}" for d in _include_dirs()),
            f"--plugin=protoc-gen-es={PLUGIN}",
            f"--es_out={tmp}",
            "--es_opt=target=ts,import_extension=js",
            *SOURCES,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(tmp, out_dir)


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else CLIENT / "src" / "gen"
    generate(out_dir)
    print(f"generated {out_dir}")


if __name__ == "__main__":
    main()
