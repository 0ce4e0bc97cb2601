"""Structured JSON logs carrying the trace id and request id."""

from __future__ import annotations

import json
import logging
import sys
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.resources import Resource

from sluice.core.config import LogExportSettings
from sluice.core.grpcx.request_context import current_request_id
from sluice.core.privacy import RedactingLogFilter

# The exporter's own logs (and gRPC's) are not exported: a failing export would feed itself.
_NOT_EXPORTED = ("opentelemetry", "grpc")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, ids, exception."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # already formatted (and redacted, core/privacy.py)
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def _exportable(record: logging.LogRecord) -> bool:
    return not record.name.startswith(_NOT_EXPORTED)


def otlp_log_handler(
    service: str, settings: LogExportSettings, *, exporter: LogRecordExporter | None = None
) -> tuple[logging.Handler, LoggerProvider]:
    """A handler exporting records over OTLP in batches, with the current span's ids.

    The resource names the service as its tracer provider does (core/telemetry/tracing.py),
    so a back end joins a record to its span by trace id and service.
    """
    resource = Resource.create({"service.name": service, "service.namespace": "sluice"})
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            exporter
            or OTLPLogExporter(
                endpoint=settings.endpoint, insecure=True, timeout=settings.timeout_s
            ),
            max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.export_delay_ms,
            max_export_batch_size=min(512, settings.max_queue_size),
        )
    )
    level = logging.getLevelNamesMapping()[settings.level]
    handler = LoggingHandler(level=level, logger_provider=provider)
    handler.addFilter(_exportable)
    return handler, provider


def configure_logging(
    service: str,
    level: str,
    export: LogExportSettings | None = None,
    *,
    redact_pii: bool = False,
) -> LoggerProvider | None:
    """Route all logging to stderr as JSON lines, and over OTLP when an endpoint is set;
    with `redact_pii`, every record is redacted first (core/privacy.py).

    Returns the OTLP logger provider (to flush at exit), or None when not exporting.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handlers: list[logging.Handler] = [handler]
    provider = None
    if export is not None and export.endpoint:
        otlp, provider = otlp_log_handler(service, export)
        handlers.append(otlp)
    if redact_pii:
        for each in handlers:
            each.addFilter(RedactingLogFilter())
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    return provider
