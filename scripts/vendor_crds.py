"""Re-fetches the CRD schemas vendored under deploy/k8s/crds/ and checks them byte for byte.

The custom resources `sluice k8s render` writes (Argo Rollouts, Prometheus Operator,
cert-manager) are validated against their CRDs' openAPIV3Schema
(tests/unit/launcher/k8s_crds.py). The projects' CRD YAML lives on GitHub, which this
project's machines cannot reach; the npm registry can. The `@kubernetes-models/*`
packages listed below were built by `crd-generate` from the upstream CRD files their
package.json names, and carry each CRD's openAPIV3Schema as a JSON object literal
(`const schema = {...}`). This script downloads each package with `npm pack`, checks the
tarball's sha256, checks that the package says it was built from the upstream files
recorded here, and writes each kind's schema as JSON next to a provenance.json.

    python scripts/vendor_crds.py          # fetch and compare with the committed files
    python scripts/vendor_crds.py --write  # fetch and (re)write them

What crd-generate changed from the CRD files: descriptions and the x-kubernetes-*
extensions are dropped, optional fields get `nullable: true`, `metadata` becomes a
`$ref` to ObjectMeta, and apiVersion/kind become one-value enums (deploy/k8s/crds/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess  # nosec B404 - runs npm pack
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "deploy" / "k8s" / "crds"
# The upstream projects' license, all three Apache-2.0: Debian's copy of the text.
APACHE_2 = Path("/usr/share/common-licenses/Apache-2.0")
REGISTRY = "https://registry.npmjs.org/"


@dataclass(frozen=True)
class Source:
    """One npm package and the kinds taken from it."""

    directory: str  # under deploy/k8s/crds/
    project: str
    upstream_version: str  # as the package's build inputs name it
    package: str
    version: str
    sha256: str  # of the tarball `npm pack` downloads
    upstream: tuple[str, ...]  # the CRD files the package.json says it was built from
    kinds: dict[str, str] = field(default_factory=dict)  # kind -> file in the tarball


def kubernetes_models(
    project: str,
    upstream_version: str,
    version: str,
    sha256: str,
    *,
    upstream: tuple[str, ...],
    apis: tuple[str, ...],
) -> Source:
    """The `@kubernetes-models/<repository>` package built from `project`'s CRDs, vendored
    under <repository>-<upstream_version>/; each API "group/version/Kind" is read from the
    package's <group>/<version>/<Kind>.js."""
    repository = project.rsplit("/", 1)[1]
    return Source(
        directory=f"{repository}-{upstream_version}",
        project=project,
        upstream_version=upstream_version,
        package=f"@kubernetes-models/{repository}",
        version=version,
        sha256=sha256,
        upstream=upstream,
        kinds={api.rsplit("/", 1)[1]: f"package/{api}.js" for api in apis},
    )


# Each: the upstream project and its release, then the package's version and its tarball's
# sha256.
SOURCES = (
    kubernetes_models(
        "argoproj/argo-rollouts",
        "v1.5.0",
        "0.3.2",
        "e90e3f33e0c815ce390b21bf51d3cc01800d05fd9f3d81324727e08ff1d790c3",
        upstream=(
            "https://github.com/argoproj/argo-rollouts/releases/download/v1.5.0/install.yaml",
        ),
        apis=("argoproj.io/v1alpha1/Rollout", "argoproj.io/v1alpha1/AnalysisTemplate"),
    ),
    kubernetes_models(
        "cert-manager/cert-manager",
        "v1.11.2",
        "4.3.1",
        "bbfced6629571e030fa9b7d7024454275628104354b93323273b5f4fb7e630fd",
        # The last cert-manager input of the package's list: its cert-manager.io/v1
        # kinds come from this release (the earlier inputs only define older versions).
        upstream=(
            "https://github.com/jetstack/cert-manager/releases/download/v1.11.2/cert-manager.crds.yaml",
        ),
        apis=("cert-manager.io/v1/Certificate",),
    ),
    kubernetes_models(
        "prometheus-operator/prometheus-operator",
        "v0.57.0",
        "4.0.0",
        "ba02343671d84921cc03f67f56f354fe7a791ff809a59e80edda8d51a1196ee5",
        upstream=(
            "https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/v0.57.0/example/prometheus-operator-crd-full/monitoring.coreos.com_podmonitors.yaml",
            "https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/v0.57.0/example/prometheus-operator-crd-full/monitoring.coreos.com_prometheusrules.yaml",
        ),
        apis=("monitoring.coreos.com/v1/PodMonitor", "monitoring.coreos.com/v1/PrometheusRule"),
    ),
)


class VendorError(Exception):
    """A download or check that failed; the message says which and why."""


def npm_pack(source: Source, destination: Path) -> Path:
    """The package tarball, downloaded by npm (which checks the registry's integrity)."""
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm is missing: `make js-deps` installs it")
    done = subprocess.run(  # noqa: S603  # nosec B603 - fixed argv, no shell
        [npm, "pack", f"{source.package}@{source.version}", "--json", "--registry", REGISTRY,
         "--pack-destination", str(destination)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise VendorError(f"npm pack {source.package}@{source.version}: {done.stderr.strip()}")
    (packed,) = json.loads(done.stdout)
    return destination / str(packed["filename"])


def schema_literal(script: str) -> dict[str, object]:
    """The `const schema = {...};` object literal crd-generate wrote: plain JSON."""
    match = re.search(r"^const schema = (\{.*?^\});$", script, re.MULTILINE | re.DOTALL)
    if match is None:
        raise VendorError("no `const schema = {...};` in the file")
    found: dict[str, object] = json.loads(match.group(1))
    return found


def build_inputs(package_json: dict[str, object]) -> set[str]:
    """The CRD files the package's build read: its crd-generate inputs or build scripts."""
    generate = package_json.get("crd-generate")
    inputs = set(generate.get("input", [])) if isinstance(generate, dict) else set()
    scripts = package_json.get("scripts")
    for command in scripts.values() if isinstance(scripts, dict) else []:
        inputs.update(re.findall(r"--input (\S+)", str(command)))
    return inputs


def vendored(source: Source, tarball: Path) -> dict[str, bytes]:
    """The files of deploy/k8s/crds/<directory>/ this package gives, by name."""
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != source.sha256:
        raise VendorError(f"{tarball.name}: sha256 {digest}, expected {source.sha256}")
    files: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as archive:

        def read(name: str) -> str:
            member = archive.extractfile(name)
            if member is None:
                raise VendorError(f"{tarball.name}: no {name}")
            return member.read().decode()

        package_json = json.loads(read("package/package.json"))
        missing = set(source.upstream) - build_inputs(package_json)
        if missing:
            raise VendorError(f"{source.package}@{source.version} was not built from {missing}")
        for kind, path in source.kinds.items():
            schema = schema_literal(read(path))
            files[f"{kind.lower()}.schema.json"] = (json.dumps(schema, indent=1) + "\n").encode()
        files["LICENSE.kubernetes-models"] = read("package/LICENSE").encode()
    files["LICENSE"] = APACHE_2.read_bytes()
    provenance = {
        "project": source.project,
        "upstream_version": source.upstream_version,
        "upstream_files": list(source.upstream),
        "registry": REGISTRY,
        "package": source.package,
        "version": source.version,
        "tarball_sha256": source.sha256,
        "kinds": {kind: f"{kind.lower()}.schema.json" for kind in source.kinds},
        "extracted_from": source.kinds,
        "fetched_by": "scripts/vendor_crds.py",
    }
    files["provenance.json"] = (json.dumps(provenance, indent=2) + "\n").encode()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write the files, not compare")
    args = parser.parse_args()
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in SOURCES:
            try:
                files = vendored(source, npm_pack(source, Path(tmp)))
            except VendorError as error:
                print(f"vendor_crds: {error}", file=sys.stderr)
                return 1
            directory = CRDS / source.directory
            for name, content in files.items():
                path = directory / name
                if args.write:
                    directory.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(content)
                elif not path.is_file() or path.read_bytes() != content:
                    stale.append(str(path.relative_to(ROOT)))
            print(f"{source.package}@{source.version} sha256 ok -> {directory.relative_to(ROOT)}")
    if stale:
        print("vendor_crds: differs from the registry: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
