"""The suite's parts by name: constants the command line's parser needs (launcher/cli.py),
kept apart from parts.py and replicas.py so that building the parser imports no settings,
gRPC or telemetry modules."""

from __future__ import annotations

SERVICES = ("telemetry", "limiter", "provider", "router")
"""The suite's gRPC services, in start order."""
REPLICATED = ("limiter", "provider", "router")
"""The parts that may run several processes."""
MAX_REPLICAS = 16
"""Most processes of one part (`supervisor.replicas` allows as many)."""
