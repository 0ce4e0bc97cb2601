"""`python -m sluice.router`: load settings, build, serve until SIGTERM."""

from sluice.core.grpcx.main import service_main
from sluice.router.service import build_server
from sluice.router.settings import RouterSettings

if __name__ == "__main__":
    service_main("router", RouterSettings, build_server)
