"""The control endpoint `sluice rollout …` talks to: HTTP on loopback, on a free port
written to `<run_dir>/rollout.url`, every request carrying the bearer token from
`<run_dir>/rollout.token` (mode 0600: only the user running `sluice up` can read it).

    GET  /v1/rollout            status
    POST /v1/rollout            {"strategy", "candidate", "candidate_bin"?, "version"?,
                                 "settings"?: rollout settings for this rollout only}
    POST /v1/rollout/promote    skip to the end
    POST /v1/rollout/abort      roll back

Errors are JSON `{"error": {"reason", "message"}}` with 400, 401, 404, 409 or 413.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sluice.launcher.rollout.client import token_path, url_path
from sluice.launcher.rollout.controller import RolloutError, Rollouts

_MAX_BODY = 16 * 1024


class _Handler(BaseHTTPRequestHandler):
    server: ControlServer

    def log_message(self, format: str, *args: Any) -> None:
        """Decisions are logged by the rollout itself."""

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, reason: str, message: str) -> None:
        self._reply(status, {"error": {"reason": reason, "message": message}})

    def _authorized(self) -> bool:
        given = self.headers.get("authorization", "")
        expected = f"Bearer {self.server.token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return True
        self._error(401, "UNAUTHENTICATED", f"bearer token from {token_path(Path('<run-dir>'))}")
        return False

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path != "/v1/rollout":
            self._error(404, "NOT_FOUND", f"no such path {self.path[:100]}")
            return
        self._reply(200, self.server.rollouts.status())

    def do_POST(self) -> None:
        if not self._authorized():
            return
        length = int(self.headers.get("content-length") or 0)
        if length > _MAX_BODY:
            self._error(413, "TOO_LARGE", f"body over {_MAX_BODY} bytes")
            return
        raw = self.rfile.read(length) if length else b""
        rollouts = self.server.rollouts
        try:
            if self.path == "/v1/rollout":
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict) or not isinstance(body.get("candidate"), str):
                    raise RolloutError("INVALID_ARGUMENT", "body needs strategy and candidate")
                binary, version = body.get("candidate_bin"), body.get("version")
                if not all(
                    isinstance(v, str | None) for v in (binary, version, body.get("strategy"))
                ):
                    raise RolloutError(
                        "INVALID_ARGUMENT", "strategy, candidate_bin and version are strings"
                    )
                overrides = body.get("settings") or {}
                if not isinstance(overrides, dict):
                    raise RolloutError("INVALID_ARGUMENT", "settings is an object")
                status = rollouts.start(
                    str(body.get("strategy")), body["candidate"], binary, version, overrides
                )
                self._reply(202, status)
            elif self.path == "/v1/rollout/promote":
                self._reply(202, rollouts.promote())
            elif self.path == "/v1/rollout/abort":
                self._reply(202, rollouts.abort())
            else:
                self._error(404, "NOT_FOUND", f"no such path {self.path[:100]}")
        except json.JSONDecodeError:
            self._error(400, "INVALID_ARGUMENT", "body is not JSON")
        except RolloutError as err:
            self._error(err.status, err.reason, str(err))


class ControlServer(ThreadingHTTPServer):
    """The endpoint, bound to 127.0.0.1 on a free port."""

    daemon_threads = True

    def __init__(self, rollouts: Rollouts, run_dir: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.rollouts = rollouts
        self.token = secrets.token_urlsafe(32)
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        path = token_path(run_dir)
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(self.token)
        url_path(run_dir).write_text(f"http://127.0.0.1:{self.server_port}\n", encoding="utf-8")
        self._thread = threading.Thread(
            target=self.serve_forever, daemon=True, name="rollout-control"
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving; remove the URL and token files."""
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
        url_path(self.run_dir).unlink(missing_ok=True)
        token_path(self.run_dir).unlink(missing_ok=True)
