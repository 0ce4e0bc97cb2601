"""The web page at `/` (router/web/): static HTML, CSS and ES modules, no build step.

Served by the router's HTTP listener, which Envoy routes `GET /` and `GET /ui/*` to.
Only the files in `web/` are served (a fixed table, not a directory walk), with a
content security policy that lets the page's scripts come only from here.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parent / "web"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# connect-src 'self': the page sends the pasted API key with every call, so it may call
# its own origin only (app.js ignores a `?grpc_web=` naming another origin, and the
# browser would refuse it anyway); scripts, styles and frames stay ours too.
_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in sorted(WEB_DIR.iterdir()):
        content_type = _TYPES.get(path.suffix)
        if content_type is not None and path.is_file():
            files[path.name] = (path.read_bytes(), content_type)
    if "index.html" not in files:
        raise FileNotFoundError(f"{WEB_DIR / 'index.html'} is missing")
    return files


def add_web_page(app: web.Application) -> None:
    """Serve `GET /` (index.html) and `GET /ui/<file>` from memory (read once)."""
    files = _load()

    def reply(name: str) -> web.Response:
        body, content_type = files[name]
        return web.Response(body=body, headers={"content-type": content_type, **_HEADERS})

    async def index(request: web.Request) -> web.Response:
        return reply("index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound(text="no such file")
        return reply(name)

    app.router.add_get("/", index)
    app.router.add_get("/ui/{name}", asset)
