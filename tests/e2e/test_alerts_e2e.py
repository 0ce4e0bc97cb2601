"""Alerts that arrive: real Prometheus and Alertmanager, a Slack webhook and an SMTP server.

The real suite runs with fault injection on; Debian's `prometheus` scrapes it with the
project's rules and Debian's `prometheus-alertmanager` routes with
deploy/alertmanager/alertmanager.yml to a local Slack-compatible incoming webhook (aiohttp,
checking Slack's JSON) and a local SMTP server (aiosmtpd, with AUTH). Requests carrying
`x-sluice-fault: error_rate=1` drive the SLA error-budget alert; its page reaches Slack
and e-mail with summary, severity and runbook link, and the resolved notification
follows once the faults stop. Then the limiter is frozen (SIGSTOP): the target-down page
arrives, and its resolution once it runs again (SIGCONT). The Slack URL and SMTP password
come from files, as in production.

Bounded: the test's copies of the rules keep every expression but scale the time
windows down (5m → 5s ... 3d → 40s) and `for:` to 1 s; Alertmanager groups after 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import itertools
import os
import re
import shutil
import signal
import subprocess  # nosec B404 - starts Prometheus and Alertmanager under test
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.e2e.conftest import DEV_KEY, RunningSuite, free_ports, start_suite
from tests.e2e.test_prometheus import render_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
ALERT = "SluiceErrorBudgetBurn"
DOWN = "SluiceTargetDown"
RUNBOOK = "docs/runbooks.md#error-budget-burn"
# Window scaling of the test's rule copies: order kept, so short windows stay short.
WINDOWS = {
    "5m": "5s",
    "30m": "10s",
    "1h": "15s",
    "6h": "25s",
    "3d": "40s",
}
SLACK_TOKEN = "T0TEST/B0TEST/not-a-real-token"
SMTP_USER = "sluice-alerts@example.com"
SMTP_PASSWORD = "smtp-secret-from-a-file"
PROVIDER = {
    "fault_injection": True,
    "backends": {
        "simulated": {"time_to_first_token_ms": 1, "tokens_per_second": 2000, "answer_tokens": 2}
    },
}
# Failures must stay failures (no breaker fast-fail outliving the fault window).
ROUTER = {"resilience": {"breaker": {"failure_threshold": 100000}}}


@dataclass
class Inbox:
    """What the local Slack webhook and SMTP server received."""

    slack: list[dict[str, Any]] = field(default_factory=list)
    slack_errors: list[str] = field(default_factory=list)
    mails: list[EmailMessage] = field(default_factory=list)
    logins: list[LoginPassword] = field(default_factory=list)


def check_slack_payload(payload: Any) -> list[str]:
    """Problems with an incoming-webhook body, by Slack's documented shape."""
    problems: list[str] = []
    if not isinstance(payload, dict):
        return ["body is not a JSON object"]
    if not payload.get("text") and not payload.get("attachments") and not payload.get("blocks"):
        problems.append("neither text, attachments nor blocks")
    for attachment in payload.get("attachments", []):
        if not isinstance(attachment, dict):
            problems.append("an attachment is not an object")
            continue
        if not (attachment.get("fallback") or attachment.get("text")):
            problems.append("attachment without fallback or text")
        for key in ("title", "text", "fallback", "color", "title_link"):
            if key in attachment and not isinstance(attachment[key], str):
                problems.append(f"attachment {key} is not a string")
    if "channel" in payload and not str(payload["channel"]).startswith(("#", "@", "C")):
        problems.append(f"bad channel {payload['channel']!r}")
    return problems


async def slack_webhook(inbox: Inbox) -> tuple[web.AppRunner, str]:
    """A Slack incoming webhook: POST /services/<token> with JSON, answers `ok`."""

    async def hook(request: web.Request) -> web.Response:
        if request.match_info["token"] != SLACK_TOKEN:
            return web.Response(status=403, text="invalid_token")
        if request.content_type != "application/json":
            inbox.slack_errors.append(f"content type {request.content_type}")
            return web.Response(status=400, text="invalid_payload")
        payload = await request.json()
        problems = check_slack_payload(payload)
        if problems:
            inbox.slack_errors.extend(problems)
            return web.Response(status=400, text="invalid_payload")
        inbox.slack.append(payload)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/services/{token:.+}", hook)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/services/{SLACK_TOKEN}"


class MailHandler:
    """aiosmtpd handler keeping every message."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self._inbox.mails.append(message)
        return "250 Message accepted for delivery"


@pytest.fixture
async def inbox() -> AsyncIterator[tuple[Inbox, str, int]]:
    received = Inbox()
    runner, slack_url = await slack_webhook(received)

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        received.logins.append(data)
        ok = data.login.decode() == SMTP_USER and data.password.decode() == SMTP_PASSWORD
        return AuthResult(success=ok)

    [smtp_port] = free_ports(1)
    # AUTH is offered and checked; TLS is not (Alertmanager authenticates in the clear
    # only to 127.0.0.1/localhost, as Go's net/smtp allows). PLAIN only: aiosmtpd's
    # LOGIN challenges ("User Name") are not the usual "Username:" Alertmanager expects.
    controller = Controller(
        MailHandler(received),
        hostname="127.0.0.1",
        port=smtp_port,
        authenticator=authenticate,
        auth_require_tls=False,
        auth_exclude_mechanism=["LOGIN"],
    )
    controller.start()
    try:
        yield received, slack_url, smtp_port
    finally:
        controller.stop()
        await runner.cleanup()


def scaled_rules(source: Path, target: Path) -> None:
    """The rule file with its windows scaled down and `for:` at 1 s, expressions kept."""
    groups = yaml.safe_load(source.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(
                r"\[(\d+[smhd])\]", lambda m: f"[{WINDOWS.get(m[1], m[1])}]", rule["expr"]
            )
            if "for" in rule:
                rule["for"] = "1s"
    target.write_text(yaml.safe_dump(groups))


def prometheus_config(ports: dict[str, int], alertmanager_port: int, into: Path) -> Path:
    path = render_config(ports, into)
    config = yaml.safe_load(path.read_text())
    # The SLA rules plus the recording rules they read; other alerts would only add noise.
    config["rule_files"] = ["rules/sluice.rules.yml", "rules/sla.rules.yml"]
    for name in ("sluice.rules.yml", "sla.rules.yml"):
        scaled_rules(into / "rules" / name, into / "rules" / name)
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{alertmanager_port}"]}
    ]
    path.write_text(yaml.safe_dump(config))
    return path


def alertmanager_config(smtp_port: int, into: Path, slack_url: str) -> Path:
    """The committed config with local endpoints, secrets in files, 1 s grouping."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    glob = config["global"]
    # The committed file names secret files; it never holds a secret itself.
    assert "slack_api_url" not in glob and "smtp_auth_password" not in glob
    assert "slack_api_url_file" in glob and "smtp_auth_password_file" in glob
    for receiver in config["receivers"]:
        for slack in receiver.get("slack_configs", []):
            assert "api_url" not in slack
        for mail in receiver.get("email_configs", []):
            assert "auth_password" not in mail
    (into / "slack-webhook-url").write_text(slack_url + "\n")
    (into / "smtp-password").write_text(SMTP_PASSWORD)
    glob["slack_api_url_file"] = str(into / "slack-webhook-url")
    glob["smtp_auth_password_file"] = str(into / "smtp-password")
    glob["smtp_smarthost"] = f"127.0.0.1:{smtp_port}"
    glob["smtp_require_tls"] = False
    config.pop("templates", None)
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for route in config["route"].get("routes", []):
        route.pop("repeat_interval", None)
    path = into / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)  # nosec B603


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def slack_messages(inbox: Inbox, status: str, alert: str = ALERT) -> list[dict[str, Any]]:
    return [
        attachment
        for payload in inbox.slack
        for attachment in payload.get("attachments", [])
        if f" {alert} ({status})" in attachment.get("title", "")
    ]


def mails(inbox: Inbox, status: str, alert: str = ALERT) -> list[EmailMessage]:
    return [m for m in inbox.mails if m["Subject"] == f"[sluice] {alert} {status}"]


def limiter_pid(suite: RunningSuite) -> int:
    """The limiter process under `sluice up` (`python -m sluice.limiter`)."""
    for pid in suite.descendants():
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"sluice.limiter" in argv:
                return pid
    raise AssertionError("no limiter process under the suite")


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, message.as_string()[:2000]
    content = part.get_content()
    assert isinstance(content, str)
    return content


async def traffic(edge: str, fault: asyncio.Event, stop_event: asyncio.Event) -> None:
    """Steady requests, with the error fault while `fault` is set."""
    counter = itertools.count()
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        while not stop_event.is_set():
            headers = {"authorization": f"Bearer {DEV_KEY}"}
            if fault.is_set():
                headers["x-sluice-fault"] = "error_rate=1"
            body = {
                "model": "default",
                "messages": [{"role": "user", "content": f"alert me {next(counter)}"}],
                "max_tokens": 2,
            }
            # A failed request is what the alert is about.
            with contextlib.suppress(httpx.HTTPError):
                await client.post(f"{edge}/v1/complete", json=body, headers=headers)
            await asyncio.sleep(0.05)


async def wait_for(check: Any, within_s: float, what: str, logs: Any) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not arrive within {within_s}s\n{logs()}")
        await asyncio.sleep(0.25)


async def test_error_budget_page_reaches_slack_and_email_then_resolves(
    tmp_path: Path, inbox: tuple[Inbox, str, int]
) -> None:
    received, slack_url, smtp_port = inbox
    prometheus = shutil.which("prometheus")
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert prometheus and alertmanager, "run `make tools` (Debian prometheus packages)"
    prom_port, am_port = free_ports(2)
    began = time.monotonic()
    (tmp_path / "suite").mkdir()
    with start_suite(tmp_path / "suite", provider=PROVIDER, router=ROUTER) as suite:
        suite_s = time.monotonic() - began
        began = time.monotonic()
        (tmp_path / "am").mkdir()
        (tmp_path / "prom").mkdir()
        am = start(
            [
                alertmanager,
                f"--config.file={alertmanager_config(smtp_port, tmp_path / 'am', slack_url)}",
                f"--storage.path={tmp_path / 'am' / 'data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # no gossip port: one instance
            ],
            tmp_path / "alertmanager.log",
        )
        prom = start(
            [
                prometheus,
                f"--config.file={prometheus_config(suite.ports, am_port, tmp_path / 'prom')}",
                f"--storage.tsdb.path={tmp_path / 'prom' / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp_path / "prometheus.log",
        )

        def logs() -> str:
            return (
                "\n".join(
                    f"--- {name}\n{(tmp_path / name).read_text(errors='replace')[-3000:]}"
                    for name in ("alertmanager.log", "prometheus.log")
                )
                + f"\nslack errors: {received.slack_errors}\nslack: {received.slack}"
            )

        frozen = False
        fault, done = asyncio.Event(), asyncio.Event()
        fault.set()
        load = asyncio.create_task(traffic(suite.edge, fault, done))
        try:
            await wait_for(
                lambda: slack_messages(received, "firing") and mails(received, "firing"),
                60,
                "the firing page",
                logs,
            )
            fault.clear()
            fired_s = time.monotonic() - began
            await wait_for(
                lambda: slack_messages(received, "resolved") and mails(received, "resolved"),
                60,
                "the resolved notification",
                logs,
            )
            resolved_s = time.monotonic() - began

            # A stopped limiter (frozen, as a hung process or a paused container is): its
            # scrapes fail, so the target-down page goes out; thawed, it resolves.
            limiter = limiter_pid(suite)
            os.kill(limiter, signal.SIGSTOP)
            frozen = True
            await wait_for(
                lambda: (
                    slack_messages(received, "firing", DOWN) and mails(received, "firing", DOWN)
                ),
                60,
                "the target-down page",
                logs,
            )
            os.kill(limiter, signal.SIGCONT)
            frozen = False
            await wait_for(
                lambda: (
                    slack_messages(received, "resolved", DOWN) and mails(received, "resolved", DOWN)
                ),
                60,
                "the target-down resolved notification",
                logs,
            )
            down_s = time.monotonic() - began
        finally:
            if frozen:
                os.kill(limiter, signal.SIGCONT)  # else the suite could not stop
            done.set()
            await load
            stop(prom)
            stop(am)

    assert received.slack_errors == []
    # The page went to the on-call channel (severity=page route), with the alert's
    # summary, severity and runbook link in the text.
    firing = slack_messages(received, "firing")[0]
    payload = next(p for p in received.slack if firing in p.get("attachments", []))
    assert payload["channel"] == "#sluice-oncall"
    assert firing["title"].startswith(f"PAGE {ALERT}")
    assert "[page]" in firing["text"]
    assert re.search(r"router: [\d.]+% of requests fail \(SLA 0\.1%\)", firing["text"])
    assert f"Runbook: {RUNBOOK}" in firing["text"]
    assert firing["color"] == "danger"
    resolved = slack_messages(received, "resolved")[0]
    assert "[resolved] [page]" in resolved["text"] and RUNBOOK in resolved["text"]
    assert resolved["color"] == "good"

    mail = mails(received, "firing")[0]
    assert mail["To"] == "sluice-oncall@example.com"
    assert mail["From"] == SMTP_USER
    body = text_of(mail)
    assert "[firing] [page] router:" in body and f"Runbook: {RUNBOOK}" in body
    assert f"Runbook: {RUNBOOK}" in text_of(mails(received, "resolved")[0])
    down = slack_messages(received, "firing", DOWN)[0]
    assert re.search(r"\[page\] sluice-limiter at 127\.0\.0\.1:\d+ is down", down["text"])
    assert "Runbook: docs/runbooks.md#target-down" in down["text"]
    assert "sluice-limiter at" in text_of(mails(received, "firing", DOWN)[0])
    assert "[resolved]" in slack_messages(received, "resolved", DOWN)[0]["text"]
    # The password Alertmanager logged in with came from its file.
    assert received.logins and all(
        (login.login.decode(), login.password.decode()) == (SMTP_USER, SMTP_PASSWORD)
        for login in received.logins
    )
    print(
        f"suite up in {suite_s:.1f}s; then error page after {fired_s:.1f}s, resolved after"
        f" {resolved_s:.1f}s; target-down page and resolved by {down_s:.1f}s"
    )
    assert down_s < 75  # the alerting part's bound (the windows are scaled for it)
