"""The interactive API docs (Swagger UI at /docs, a redirect to /ui/docs.html, through
Envoy), in a real browser.

Swagger UI is vendored into services/sluice/router/web/ from the swagger-ui-dist version
pinned in tests/js/package.json (no CDN: the page's content security policy allows only
its own origin); the copies must equal the pinned package's files. Playwright drives
Debian's chromium (`make tools`): it loads the page through the edge, authorizes with the
development key, runs "Try it out" on Complete against the live suite and reads the answer.
"""

from __future__ import annotations

import json
import shutil

import pytest
from playwright.sync_api import sync_playwright

from tests.docs.blocks import ROOT
from tests.e2e.conftest import DEV_KEY, RunningSuite

WEB = ROOT / "services" / "sluice" / "router" / "web"
DIST = ROOT / "tests" / "js" / "node_modules" / "swagger-ui-dist"
VENDORED = ("swagger-ui-bundle.js", "swagger-ui.css")
TIMEOUT_MS = 30_000
SCREENSHOTS = ROOT / "test-output" / "docs"


def test_vendored_swagger_ui_is_the_pinned_release() -> None:
    pinned = json.loads((ROOT / "tests" / "js" / "package.json").read_text())["dependencies"]
    installed = json.loads((DIST / "package.json").read_text())["version"]
    assert installed == pinned["swagger-ui-dist"], "run `make js-deps`"
    for name in VENDORED:
        assert (WEB / name).read_bytes() == (DIST / name).read_bytes(), (
            f"services/sluice/router/web/{name} differs from swagger-ui-dist {installed}: "
            f"copy node_modules/swagger-ui-dist/{name} over it"
        )


@pytest.mark.e2e
def test_try_it_out_answers_through_the_edge(docs_suite: RunningSuite) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is not installed: run `make tools`"
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on(
                "console",
                lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
            )
            page.goto(f"{docs_suite.edge}/docs")
            assert page.url == f"{docs_suite.edge}/ui/docs.html", page.url
            page.wait_for_selector("body[data-ready='1']", timeout=TIMEOUT_MS)
            # Every operation of /openapi.json is listed.
            listed = {e.get_attribute("id") for e in page.query_selector_all(".opblock")}
            assert "operations-default-RouterService_Complete" in listed
            assert "operations-default-OpenAI_ChatCompletions" in listed
            # Authorize with the development key (the bearer scheme).
            page.click("button.authorize")
            page.fill(".auth-container >> nth=0 >> input", DEV_KEY)
            page.click(".auth-container >> nth=0 >> button.authorize")
            page.click("button.btn-done")
            # Try it out: Complete, a short answer.
            operation = "#operations-default-RouterService_Complete"
            page.click(f"{operation} .opblock-summary")
            body = {"model": "default", "messages": [{"role": "user", "content": "Hi"}]}
            page.fill(
                f"{operation} textarea.body-param__text", json.dumps({**body, "max_tokens": 4})
            )
            page.click(f"{operation} button.execute")
            status = f"{operation} .live-responses-table tbody .response-col_status"
            page.wait_for_selector(status, timeout=TIMEOUT_MS)
            code = page.inner_text(status).strip()
            answer = json.loads(
                page.inner_text(f"{operation} .live-responses-table .response-col_description pre")
            )
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "try-it-out.png"))
        finally:
            browser.close()
    assert code == "200", code
    assert answer["model"] == "default" and answer["usage"]["output_tokens"] == 4
    assert answer["text"].strip()
    assert problems == []
