import json

from aiohttp import web

from sluice.core.bounded_json import parse_json_object


async def bad(request: web.Request, tool: object) -> None:
    raw = await request.read()
    # ruleid: sluice-unbounded-json-request
    body = json.loads(raw)
    text = await request.text()
    # ruleid: sluice-unbounded-json-request
    other = json.loads(text.strip())
    # ruleid: sluice-unbounded-json-request
    schema = json.loads(tool.parameters_json)
    # ruleid: sluice-aiohttp-request-json
    parsed = await request.json()
    print(body, other, schema, parsed)


async def good(request: web.Request, cached: str) -> None:
    raw = await request.read()
    # ok: sluice-unbounded-json-request
    body = parse_json_object(raw.decode(), field="body", max_bytes=1 << 20, max_depth=64)
    # ok: sluice-unbounded-json-request
    entry = json.loads(cached)
    print(body, entry)
