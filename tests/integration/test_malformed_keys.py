"""A key that is not UTF-8 is a 401 with the error body, not a 500 (issue 16 item 3).

Through the router's real OpenAI-compatible HTTP listener (gRPC clients cannot send
such bytes in text metadata; tests/unit/router/test_auth.py covers bytes values).
"""

from __future__ import annotations

import httpx
import pytest

from tests.support import Suite


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
async def test_non_utf8_key_on_models_is_a_401(suite: Suite, header: str) -> None:
    port = suite.router.http_port
    value = b"sk-\xff\xfe" if header == "x-api-key" else b"Bearer sk-\xff"
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(
            f"http://127.0.0.1:{port}/v1/models", headers={header.encode(): value}
        )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"
