"""`python -m sluice.provider`: load settings, build, serve until SIGTERM."""

from sluice.core.grpcx.main import service_main
from sluice.provider.service import build_server
from sluice.provider.settings import ProviderSettings

if __name__ == "__main__":
    service_main("provider", ProviderSettings, build_server)
