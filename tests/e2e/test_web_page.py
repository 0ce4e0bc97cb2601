"""The web page at `/`, driven in Debian's headless Chromium through Envoy.

Playwright for Python drives the system `chromium` (`make tools` installs it; no
browser is downloaded). The page calls its own origin only (it sends the pasted API key:
`connect-src 'self'`, and `?grpc_web=` naming another origin is ignored). The edge's CORS
policy is checked in the browser from another page (localhost vs 127.0.0.1, both the same
Envoy): the browser itself runs the preflight and must be allowed to read `grpc-status`.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.e2e.conftest import DEV_KEY, RunningSuite, start_suite

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "web-page"
# Slow enough that a cancel lands mid-stream: 20 tokens/s, up to 400 tokens.
SLOW_MODEL = {
    "backends": {
        "simulated": {"time_to_first_token_ms": 50, "tokens_per_second": 20, "answer_tokens": 400}
    }
}
TIMEOUT_MS = 20_000


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "Debian's chromium is not installed: run `make tools` (as root) to install it; "
            "the web page's browser test needs a real browser and does not download one."
        )
    return path


@pytest.fixture(scope="module")
def web_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    with start_suite(tmp_path_factory.mktemp("web"), provider=SLOW_MODEL) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, web_suite: RunningSuite) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    port = web_suite.ports["envoy"]
    opened.goto(f"http://127.0.0.1:{port}/?grpc_web=http://127.0.0.1:{port}")
    opened.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT_MS)
    try:
        yield opened
    finally:
        context.close()
    assert problems == []


def shoot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def text(page: Page, selector: str) -> str:
    return page.text_content(selector) or ""


def wait_status(page: Page, state: str) -> None:
    page.wait_for_selector(f"#status[data-state='{state}']", timeout=TIMEOUT_MS)


def provider_cancels(suite: RunningSuite) -> float:
    text = httpx.get(suite.metrics_url("provider"), timeout=5).text
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^sluice_provider_streams_total\{[^}]*outcome="cancelled"[^}]*\} (\S+)$', text, re.M
        )
    )


def test_stream_usage_and_grpc_web_models(page: Page) -> None:
    # gRPC-Web ListModels: a wrong key first (trailers-only status 16), then the right one.
    page.fill("#api-key", "sk-wrong")
    page.click("#load-models")
    page.wait_for_selector("#models-status[data-state='error']", timeout=TIMEOUT_MS)
    assert page.get_attribute("#models-status", "data-code") == "16"
    assert "UNAUTHENTICATED" in text(page, "#models-status")

    page.fill("#api-key", DEV_KEY)
    page.click("#load-models")
    page.wait_for_selector("#models-status[data-state='ok']", timeout=TIMEOUT_MS)
    assert int(page.get_attribute("#models-status", "data-count") or 0) >= 1
    assert "default" in page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    page.select_option("#model", "default")

    # Record what the output showed while the stream was still running.
    page.evaluate(
        """() => {
          window.seen = [];
          new MutationObserver(() => window.seen.push({
            length: document.getElementById('output').textContent.length,
            state: document.getElementById('status').dataset.state,
          })).observe(document.getElementById('output'),
                      {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.fill("#max-tokens", "16")
    page.fill("#prompt", "Tell me about sluices")
    page.click("#send")
    wait_status(page, "complete")

    output = text(page, "#output")
    assert output.strip()
    seen = page.evaluate("window.seen")
    partial = [s for s in seen if s["state"] == "streaming" and 0 < s["length"] < len(output)]
    assert len(partial) >= 2, f"text did not arrive incrementally: {seen}"
    usage = {k: int(page.get_attribute("#usage", f"data-{k}") or -1)
             for k in ("input", "output", "total")}  # fmt: skip
    assert 0 < usage["output"] <= 16
    assert usage["input"] > 0 and usage["total"] == usage["input"] + usage["output"]
    assert f"output {usage['output']}" in text(page, "#usage")
    assert text(page, "#fallback") == "primary"
    assert re.fullmatch(r"[0-9a-f]{32}", text(page, "#trace-id"))
    assert page.is_hidden("#error")
    shoot(page, "1-streamed")

    # The same through gRPC-Web streaming (framed protobuf in the page).
    page.select_option("#transport", "grpc-web")
    page.fill("#max-tokens", "6")
    page.click("#send")
    wait_status(page, "complete")
    assert text(page, "#output").strip()
    assert int(page.get_attribute("#usage", "data-output") or 0) == 6
    assert re.fullmatch(r"[0-9a-f]{32}", text(page, "#trace-id"))
    shoot(page, "2-grpc-web-stream")


def test_cancel_mid_stream_stops_the_provider(page: Page, web_suite: RunningSuite) -> None:
    before = provider_cancels(web_suite)
    page.fill("#api-key", DEV_KEY)
    page.fill("#max-tokens", "400")  # 20 s of tokens at 20 tokens/s
    page.fill("#prompt", "Write a long essay about canal locks")
    page.click("#send")
    page.wait_for_selector("#output:not(:empty)", timeout=TIMEOUT_MS)
    page.click("#cancel")
    wait_status(page, "cancelled")
    assert page.get_attribute("#usage", "data-total") is None, "a cancelled stream completed"
    assert page.is_hidden("#error")
    shown = len(text(page, "#output"))
    deadline = time.monotonic() + 10
    while provider_cancels(web_suite) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert provider_cancels(web_suite) == before + 1, "the provider never saw the cancel"
    # Nothing more is written after the cancel.
    assert len(text(page, "#output")) == shown
    assert page.is_enabled("#send") and page.is_disabled("#cancel")
    shoot(page, "3-cancelled")

    # The same over gRPC-Web: aborting the fetch resets the stream through Envoy.
    page.select_option("#transport", "grpc-web")
    page.click("#send")
    page.wait_for_selector("#output:not(:empty)", timeout=TIMEOUT_MS)
    page.click("#cancel")
    wait_status(page, "cancelled")
    assert page.get_attribute("#usage", "data-total") is None
    deadline = time.monotonic() + 10
    while provider_cancels(web_suite) <= before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert provider_cancels(web_suite) == before + 2, "gRPC-Web cancel never reached the provider"


def test_errors_are_rendered(page: Page) -> None:
    page.fill("#api-key", "sk-wrong")
    page.fill("#prompt", "hello")
    page.click("#send")
    wait_status(page, "error")
    message = text(page, "#error")
    assert message.startswith("HTTP 401 · AUTHORIZATION_ERROR: "), message
    assert "key" in message.lower()
    shoot(page, "4-bad-key")

    # Bad input is the router's 400 with its message, not a generic failure.
    page.fill("#api-key", DEV_KEY)
    page.fill("#prompt", "")
    page.click("#send")
    wait_status(page, "error")
    message = text(page, "#error")
    assert message.startswith("HTTP 400 · "), message

    # Over gRPC-Web the same bad key is status 16 with the router's message.
    page.fill("#api-key", "sk-wrong")
    page.fill("#prompt", "hello")
    page.select_option("#transport", "grpc-web")
    page.click("#send")
    wait_status(page, "error")
    message = text(page, "#error")
    assert message.startswith("gRPC 16 UNAUTHENTICATED: "), message


def test_docs_redirects_to_the_interactive_docs(web_suite: RunningSuite) -> None:
    """GET /docs is a redirect with an empty body (not an error JSON), for GET only."""
    for path in ("/docs", "/docs/"):
        answer = httpx.get(f"{web_suite.edge}{path}", timeout=10)
        assert answer.status_code == 302, answer.text
        assert answer.headers["location"].endswith("/ui/docs.html")
        assert answer.content == b""
    followed = httpx.get(f"{web_suite.edge}/docs", timeout=10, follow_redirects=True)
    assert followed.status_code == 200 and "swagger-ui" in followed.text
    posted = httpx.post(f"{web_suite.edge}/docs", timeout=10)
    assert posted.status_code == 404 and posted.json()["details"][0]["reason"]


def test_grpc_web_to_another_origin_is_ignored_and_the_key_stays_home(
    browser: Browser, web_suite: RunningSuite
) -> None:
    port = web_suite.ports["envoy"]
    page_origin, other = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
    headers = httpx.get(f"{page_origin}/", timeout=10).headers
    assert "connect-src 'self';" in headers["content-security-policy"]
    context = browser.new_context()
    page = context.new_page()
    hosts: list[str] = []
    page.on("request", lambda request: hosts.append(request.url.split("/")[2]))
    try:
        page.goto(f"{page_origin}/?grpc_web={other}")
        page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT_MS)
        assert page.get_attribute("body", "data-grpc-web-ignored") == "1"
        page.fill("#api-key", DEV_KEY)
        page.click("#load-models")
        page.wait_for_selector("#models-status[data-state='ok']", timeout=TIMEOUT_MS)
        # Even a script of the page cannot reach another origin (connect-src 'self').
        refused = page.evaluate(
            """async (url) => {
                 try { await fetch(url, {method: "POST"}); return "sent"; }
                 catch (err) { return "refused"; }
               }""",
            f"{other}/sluice.router.v1.RouterService/ListModels",
        )
    finally:
        context.close()
    assert refused == "refused"
    assert set(hosts) == {f"127.0.0.1:{port}"}, hosts


def test_cors_lets_another_origins_browser_read_grpc_status(
    browser: Browser, web_suite: RunningSuite
) -> None:
    # A page of another origin without the web page's policy (the OpenAPI document)
    # calls gRPC-Web on 127.0.0.1: the browser runs the preflight, then must be allowed
    # to read grpc-status (exposed by the edge's CORS policy).
    port = web_suite.ports["envoy"]
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"http://localhost:{port}/openapi.json")
        status = page.evaluate(
            """async (url) => {
                 const answer = await fetch(url, {
                   method: "POST",
                   headers: {"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                             "authorization": "Bearer sk-wrong"},
                   body: new Uint8Array([0, 0, 0, 0, 0]),
                 });
                 return answer.headers.get("grpc-status");
               }""",
            f"http://127.0.0.1:{port}/sluice.router.v1.RouterService/ListModels",
        )
    finally:
        context.close()
    assert status == "16"
