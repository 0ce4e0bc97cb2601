"""A part's health probe for Kubernetes under mutual TLS: the kubelet's native gRPC probe
speaks plaintext only, so the pods run

    python -m sluice.launcher.probe --port 50051 [--service NAME]
        [--ca ca.pem --cert PART.pem --key PART-key.pem --server-name PART]

which asks the part's own grpc.health.v1 over loopback with the part's certificate and
exits 0 when it answers SERVING, 1 otherwise (docs/kubernetes.md, "Probes"). The renderer
writes the port and the file paths into the command, so this module reads no settings
and imports only grpc: a probe every few seconds must stay cheap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(
    port: int,
    service: str = "",
    *,
    tls: tuple[Path, Path, Path] | None = None,
    server_name: str = "",
    timeout_s: float = 2.0,
) -> bool:
    """Whether 127.0.0.1:port answers SERVING for `service` ("" = the whole server);
    `tls` is (ca, cert, key), and the server must prove `server_name`."""
    target = f"127.0.0.1:{port}"
    if tls is None:
        channel = grpc.insecure_channel(target)
    else:
        ca, cert, key = (path.read_bytes() for path in tls)
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when SERVING; 1 when not, unreachable, or the files cannot be read."""
    parser = argparse.ArgumentParser(prog="python -m sluice.launcher.probe")
    parser.add_argument("--port", type=int, required=True, help="the part's gRPC port")
    parser.add_argument("--service", default="", help="health service (default: all)")
    parser.add_argument("--ca", type=Path, help="CA bundle (mutual TLS)")
    parser.add_argument("--cert", type=Path, help="the part's certificate")
    parser.add_argument("--key", type=Path, help="the part's key")
    parser.add_argument("--server-name", default="", help="identity the server proves")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = parser.parse_args(argv)
    files = (args.ca, args.cert, args.key)
    if any(files) and not all(files):
        parser.error("--ca, --cert and --key go together")
    try:
        ok = serving(
            args.port,
            args.service,
            tls=files if all(files) else None,
            server_name=args.server_name,
            timeout_s=args.timeout,
        )
    except OSError as err:
        print(f"probe: cannot read {err.filename}: {err.strerror}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
