"""The entry point every service's __main__ uses: load settings, build, run."""

from __future__ import annotations

import sys
from collections.abc import Callable

from sluice.core.config import ConfigError, S, load_settings
from sluice.core.grpcx.server import ServiceHost, run
from sluice.core.telemetry.logging import configure_logging


def service_main(section: str, settings_cls: type[S], build: Callable[[S], ServiceHost]) -> None:
    """Load the service's settings (exit 2 naming the bad field), then serve until signalled."""
    try:
        settings = load_settings(settings_cls, section)
    except ConfigError as err:
        print(f"sluice-{section}: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    configure_logging(f"sluice-{section}", settings.log_level)

    async def main() -> None:
        try:
            host = build(settings)
        except ConfigError as err:  # e.g. a configured secret that is not there
            print(f"sluice-{section}: {err}", file=sys.stderr)
            raise SystemExit(2) from err
        await host.start()
        await host.run_until_signalled()

    run(main)
