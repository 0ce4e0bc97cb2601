"""Regenerate the Go stubs of the public API (clients/go/src/sluice.dev/sluice/gen/).

Usage: python scripts/gen_go_client.py [OUT_DIR]   (default: clients/go/src/sluice.dev/sluice/gen/)

protoc (grpc_tools) runs Debian's protoc-gen-go and protoc-gen-go-grpc (`make tools`
installs them with Go and the grpc-go sources) over the router's contract and what it
imports. Import paths are given with `M` options rather than `go_package` in the protos,
so the contracts stay language-neutral. tests/docs/test_go_client.py fails when the
committed stubs are stale.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "go"
GO_ROOT = "sluice.dev/sluice/gen"
OUT = CLIENT / "src" / GO_ROOT
PLUGINS = {"go": Path("/usr/bin/protoc-gen-go"), "go-grpc": Path("/usr/bin/protoc-gen-go-grpc")}
# Our sources and the Go package each one becomes; google.* types map to the packages the
# Go protobuf and genproto modules already ship.
SOURCES = {
    "sluice/common/v1/common.proto": f"{GO_ROOT}/sluice/common/v1;commonv1",
    "sluice/router/v1/router.proto": f"{GO_ROOT}/sluice/router/v1;routerv1",
}
IMPORTS = {
    "google/api/annotations.proto": "google.golang.org/genproto/googleapis/api/annotations",
    "google/api/http.proto": "google.golang.org/genproto/googleapis/api/annotations",
    "google/rpc/status.proto": "google.golang.org/genproto/googleapis/rpc/status",
    "google/protobuf/duration.proto": "google.golang.org/protobuf/types/known/durationpb",
}


def _include_dirs() -> list[str]:
    from google.api import annotations_pb2  # noqa: PLC0415 - locates the googleapis sources

    googleapis_root = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    return [str(ROOT / "protos"), str(googleapis_root), str(well_known)]


def generate(out_dir: Path) -> None:
    """Write the Go stubs into out_dir (replacing what is there)."""
    for plugin in PLUGINS.values():
        if not plugin.is_file():
            raise SystemExit(f"{plugin} is missing: run `make tools` (Debian protoc-gen-go*)")
    mappings = [f"M{src}={pkg}" for src, pkg in {**SOURCES, **IMPORTS}.items()]
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            *(f"-I{d}" for d in _include_dirs()),
            *(f"--plugin=protoc-gen-{name}={path}" for name, path in PLUGINS.items()),
            f"--go_out={tmp}",
            f"--go-grpc_out={tmp}",
            f"--go_opt=module={GO_ROOT}," + ",".join(mappings),
            f"--go-grpc_opt=module={GO_ROOT}," + ",".join(mappings),
            *SOURCES,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(tmp, out_dir)


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    generate(out_dir)
    print(f"generated {out_dir}")


if __name__ == "__main__":
    main()
