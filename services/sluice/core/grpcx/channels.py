"""Client channels between services: traced, with gRPC's own retry policy."""

from __future__ import annotations

import json
from typing import cast

import grpc
from opentelemetry.sdk.trace import TracerProvider

from sluice.core.grpcx.tls import ClientTls
from sluice.core.telemetry.grpc_client import TracedChannel
from sluice.core.telemetry.tracing import failed_spans_of


def _service_config(service: str, retries: bool) -> str:
    # Round robin spreads calls over every address of a multi-address target (e.g.
    # "ipv4:127.0.0.1:50053,127.0.0.1:50063" for two provider replicas).
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retries:
        # Retries of UNAVAILABLE before any response arrived: safe for our internal
        # hops because nothing has been streamed to the client at that point.
        config["methodConfig"] = [
            {
                "name": [{"service": service}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
        # Caps retries at 10% of calls during an outage (gRPC retry throttling).
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 0.1}
    return json.dumps(config)


def internal_channel(
    target: str,
    service: str,
    tracer_provider: TracerProvider | None,
    *,
    retries: bool = True,
    fixed_window: bool = False,
    tls: ClientTls | None = None,
) -> grpc.aio.Channel:
    """A channel to another Sluice service: plaintext on loopback, or mutual TLS with
    `tls` (core/grpcx/tls.py client_tls, which is None when security.mtls is off).

    ``retries=False`` leaves retrying to the caller (the router's fallback chain owns
    provider retries, with its budget): an application-level UNAVAILABLE from a back
    end must not be multiplied by a transport retry underneath. gRPC still retries
    transparently a call that never left the client (e.g. a dead replica's address).

    ``fixed_window=True`` turns off BDP probing, so each stream's receive window stays at
    gRPC's 64 KiB: a stream the caller stops reading (its client stalled) then holds at
    most that much here instead of the megabytes a probed window grows to on loopback.
    """
    options = (
        ("grpc.service_config", _service_config(service, retries)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Subchannels of our own: never one shared with another channel to the same
        # address that last saw a previous server there fail (e.g. a restarted replica
        # on a reused port) and is still backing off.
        ("grpc.use_local_subchannel_pool", 1),
        *((("grpc.http2.bdp_probe", 0),) if fixed_window else ()),
    )
    channel = (
        grpc.aio.insecure_channel(target, options=options)
        if tls is None
        else grpc.aio.secure_channel(target, tls.credentials, options=(*options, *tls.options))
    )
    if tracer_provider is None:
        return channel
    # Traced by wrapping the stub's multi-callables, not by grpc.aio interceptors, whose
    # per-call machinery is paid even for unsampled calls (core/telemetry/grpc_client.py).
    tracer = tracer_provider.get_tracer("sluice.core.telemetry.grpc_client")
    traced = TracedChannel(channel, tracer, failed_spans_of(tracer_provider))
    return cast(grpc.aio.Channel, traced)
