"""scripts/vendor_crds.py without the network: the committed files are what it records,
and it refuses a tarball whose hash or recorded upstream differs."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.scripts import load_script

vendor = load_script("vendor_crds")


def _tarball(path: Path, package_json: dict[str, object], files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        contents = {"package/package.json": json.dumps(package_json), **files}
        contents.setdefault("package/LICENSE", "MIT License\n")
        for name, text in contents.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_the_committed_provenance_is_the_scripts() -> None:
    for source in vendor.SOURCES:
        directory = vendor.CRDS / source.directory
        provenance = json.loads((directory / "provenance.json").read_text())
        assert provenance["package"] == source.package
        assert provenance["version"] == source.version
        assert provenance["tarball_sha256"] == source.sha256
        assert provenance["upstream_files"] == list(source.upstream)
        for name in provenance["kinds"].values():
            schema = json.loads((directory / name).read_text())
            assert schema["type"] == "object" and "spec" in schema["properties"]
        assert (directory / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_it_extracts_the_schema_literal_and_refuses_a_file_without_one() -> None:
    script = 'const x = 1;\nconst schema = {\n    "type": "object"\n};\nclass Rollout {}\n'
    assert vendor.schema_literal(script) == {"type": "object"}
    with pytest.raises(vendor.VendorError, match="no `const schema"):
        vendor.schema_literal("import{validate}from'./x.js';")


def test_it_reads_the_upstream_inputs_from_either_build_style() -> None:
    assert vendor.build_inputs({"crd-generate": {"input": ["https://a/crds.yaml"]}}) == {
        "https://a/crds.yaml"
    }
    assert vendor.build_inputs(
        {"scripts": {"build:x": "crd-generate --input https://b --o g"}}
    ) == {"https://b"}


def test_it_refuses_a_tarball_whose_hash_or_upstream_differs(tmp_path: Path) -> None:
    source = vendor.SOURCES[0]
    files = {path: 'const schema = {\n"type": "object"\n};\n' for path in source.kinds.values()}
    tarball = _tarball(
        tmp_path / "p.tgz", {"crd-generate": {"input": list(source.upstream)}}, files
    )
    with pytest.raises(vendor.VendorError, match="sha256"):
        vendor.vendored(source, tarball)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    written = vendor.vendored(dataclasses.replace(source, sha256=digest), tarball)
    assert json.loads(written["rollout.schema.json"]) == {"type": "object"}
    other = _tarball(tmp_path / "o.tgz", {"crd-generate": {"input": ["https://elsewhere"]}}, files)
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(vendor.VendorError, match="was not built from"):
        vendor.vendored(dataclasses.replace(source, sha256=digest), other)
