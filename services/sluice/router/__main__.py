"""`python -m sluice.router`: load settings, build, serve until SIGTERM."""

from sluice.core.grpcx.main import service_main
from sluice.router.settings import RouterSettings
from sluice.router.wiring import build_server

if __name__ == "__main__":
    service_main("router", RouterSettings, build_server)
