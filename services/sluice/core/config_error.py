"""`ConfigError` on its own: the command line (launcher/cli.py) catches it around every
command, and naming it must not import config.py's pydantic-settings, YAML and Sentry."""

from __future__ import annotations


class ConfigError(Exception):
    """Configuration that cannot be loaded or does not validate."""
