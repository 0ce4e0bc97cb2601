"""Optional Sentry reporting of server-side failures (docs/resilience.md).

Off unless a DSN is configured. What is reported: unexpected exceptions (INTERNAL) and
errors that say the gateway or a dependency is unwell (the `system`/`provider`
reasons); never a client's own mistake (validation, auth, quotas). What is sent: the
error, its reason, the service, the method, the request and trace ids. No request
metadata, no local variables, no PII: API keys and prompts never leave the gateway.
"""

from __future__ import annotations

import logging
from typing import Any

import sentry_sdk
from pydantic import BaseModel, ConfigDict, Field
from sentry_sdk.types import Event
from sentry_sdk.utils import (
    event_hint_with_exc_info,
    exc_info_from_error,
    exceptions_from_error_tuple,
)

from sluice.core.errors import SluiceError
from sluice.core.privacy import redact

log = logging.getLogger("sluice.error_reporting")

REPORTED_REASONS = frozenset(
    {"INTERNAL", "OUT_OF_MEMORY", "NETWORK_FAILURE", "SERVICE_UNAVAILABLE", "INVALID_RESPONSE"}
)


class ErrorReportingSettings(BaseModel):
    """Sentry reporting."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    sentry_dsn: str = ""
    """Sentry DSN; empty turns reporting off."""
    environment: str = "production"
    """Environment name attached to every event."""
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    """Share of errors sent."""


def _without_frame_variables(event: Event, _hint: dict[str, Any]) -> Event:
    """Drops every stack frame's local variables (they hold request metadata: API keys).

    sentry-sdk 3.x reads `data_collection` from the process's global client when it
    serializes frames, not from the client passed in, so our client's setting alone does
    not keep locals out; this hook does, whatever the global client says.
    """
    for value in event.get("exception", {}).get("values", []):
        for frame in (value.get("stacktrace") or {}).get("frames", []):
            frame.pop("vars", None)
    return event


def _redacted(event: Event, hint: dict[str, Any]) -> Event:
    """`_without_frame_variables`, then every exception's message redacted
    (core/privacy.py), for `privacy.redact_pii`."""
    event = _without_frame_variables(event, hint)
    for value in event.get("exception", {}).get("values", []):
        if isinstance(value.get("value"), str):
            value["value"] = redact(value["value"])
    return event


class ErrorReporter:
    """Sends server-side failures to Sentry."""

    def __init__(
        self, settings: ErrorReportingSettings, service: str, *, redact_pii: bool = False
    ) -> None:
        self._service = service
        self._client = sentry_sdk.Client(
            dsn=settings.sentry_dsn,
            environment=settings.environment,
            sample_rate=settings.sample_rate,
            server_name=service,  # not the host name: nothing internal leaves
            # sentry-sdk 3.x: what events carry is one data_collection setting.
            data_collection={"stack_frame_variables": False, "user_info": False},
            default_integrations=False,
            auto_enabling_integrations=False,
            traces_sample_rate=0.0,
            before_send=_redacted if redact_pii else _without_frame_variables,
        )
        self._scope = sentry_sdk.Scope(client=self._client)
        self._scope.set_tag("service", service)

    def report(
        self,
        error: BaseException,
        mapped: SluiceError,
        *,
        method: str,
        request_id: str,
        trace_id: str,
    ) -> None:
        """Send one error (when its reason is one we report)."""
        if mapped.reason not in REPORTED_REASONS:
            return
        scope = self._scope.fork()
        scope.set_tag("reason", mapped.reason)
        scope.set_tag("method", method)
        scope.set_tag("request_id", request_id)
        if trace_id:
            scope.set_tag("trace_id", trace_id)
        try:
            # Our own client and scope, not the SDK's global hub: several services may
            # share a process in tests, and nothing else in the process reports through us.
            # (3.x's event_from_exception reads the global client's options, hence the
            # two steps it is made of, with ours.)
            exc_info = exc_info_from_error(error)
            event: Event = {
                "level": "error",
                "exception": {
                    "values": exceptions_from_error_tuple(exc_info, self._client.options)
                },
            }
            self._client.capture_event(event, hint=event_hint_with_exc_info(exc_info), scope=scope)
        except Exception:  # reporting must never break serving
            log.warning("error report to Sentry failed", exc_info=True)

    def close(self, timeout_s: float = 2.0) -> None:
        """Flush pending events and stop the transport."""
        self._client.close(timeout=timeout_s)


def build_reporter(
    settings: ErrorReportingSettings, service: str, *, redact_pii: bool = False
) -> ErrorReporter | None:
    """A reporter when a DSN is configured, else None."""
    if not settings.sentry_dsn:
        return None
    return ErrorReporter(settings, service, redact_pii=redact_pii)
