"""`python -m sluice.telemetry`: load settings, build, serve until SIGTERM."""

from sluice.core.grpcx.main import service_main
from sluice.telemetry.service import build_server
from sluice.telemetry.settings import TelemetrySettings

if __name__ == "__main__":
    service_main("telemetry", TelemetrySettings, build_server)
