"""`python -m sluice.limiter`: load settings, build, serve until SIGTERM."""

from sluice.core.grpcx.main import service_main
from sluice.limiter.service import build_server
from sluice.limiter.settings import LimiterSettings

if __name__ == "__main__":
    service_main("limiter", LimiterSettings, build_server)
