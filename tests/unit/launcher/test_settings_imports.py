"""Loading the suite's settings loads settings, not the services behind them.

Each settings model lives in a `settings` module that imports only pydantic and core's
config, so `sluice envoy-config`, a config check or a test's settings fixture does not
pull in gRPC stubs, the router's multiplexing client or the metrics and tracing stacks.
"""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
from sluice.launcher.settings import load_suite
load_suite()
print(json.dumps(sorted(sys.modules)))
"""

# Implementation modules whose settings used to be imported from them.
_IMPLEMENTATIONS = (
    "sluice.router.admission",
    "sluice.router.budgets",
    "sluice.router.buffer",
    "sluice.router.provider_streams",
    "sluice.provider.coalescing",
    "sluice.provider.faults",
    "sluice.provider.multiplex",
)
_STACKS = ("opentelemetry", "prometheus_client", "aiohttp", "psutil")


def _loaded() -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def test_loading_the_suite_config_imports_no_stubs_or_clients() -> None:
    loaded = _loaded()
    assert "sluice.launcher.settings" in loaded  # the probe did load something
    assert "sluice.router.settings" in loaded
    stubs = [m for m in loaded if m.endswith("_pb2_grpc")]
    assert stubs == []
    service_contracts = [
        m for m in loaded if m.startswith("sluice.") and ".v1" in m and "common" not in m
    ]
    assert service_contracts == []
    assert [m for m in loaded if m.startswith(_IMPLEMENTATIONS)] == []
    assert [m for m in loaded if m.split(".")[0] in _STACKS] == []
