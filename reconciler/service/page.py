"""The status page as GET routes of the daemon's HTTP server: the static files in `ui/` (one HTML page,
its CSS and vanilla JavaScript, shipped in the package; nothing is fetched from anywhere else) and the
JSON API of `api`. Read-only.

Each answer carries an ETag, so a refresh that changed nothing is a bodyless 304, and headers that
keep the page to itself: a Content-Security-Policy that allows only its own files (no inline script),
no framing, no referrer.
"""
from __future__ import annotations

import hashlib
import json
from email.message import Message
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from .api import PREFIX, Api
from .http import Response

STATIC = {"/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
          "/ui/favicon.svg": ("favicon.svg", "image/svg+xml")}
PAGES = ("/", "/environments/")  # the overview, and /environments/<name>: both are index.html
HEADERS = {
    "Cache-Control": "no-cache",  # revalidate every time (the ETag makes that cheap)
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


class StatusPage:
    """The routes `/`, `/environments/<name>`, `/ui/*` and `/api/v1/*`."""

    def __init__(self, api: Api) -> None:
        self._api = api
        files = resources.files(__package__).joinpath("ui")
        self._index = files.joinpath("index.html").read_bytes()
        self._static = {route: (files.joinpath(name).read_bytes(), kind) for route, (name, kind) in STATIC.items()}

    def owns(self, path: str) -> bool:
        return path in PAGES or path.startswith(PAGES[1]) or path in STATIC or path.startswith(PREFIX)

    def get(self, target: str, headers: Message) -> Response:
        url = urlsplit(target)
        if url.path.startswith(PREFIX):
            code, document = self._api.answer(url.path, parse_qs(url.query))
            body = json.dumps(document, separators=(",", ":")).encode()
            return _answer(code, body, "application/json", headers)
        if url.path in STATIC:
            return _answer(200, *self._static[url.path], headers)
        name = url.path[len(PAGES[1]):] if url.path.startswith(PAGES[1]) else ""
        if url.path == PAGES[0] or (name and "/" not in name):
            return _answer(200, self._index, "text/html; charset=utf-8", headers)
        return Response(404, b"not found\n", headers=HEADERS)


def _answer(code: int, body: bytes, content_type: str, request: Message) -> Response:
    """`body` with the page's headers and an ETag; 304 when the client already has it."""
    if code != 200:
        return Response(code, body, content_type, HEADERS)
    tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    if tag in (request.get("If-None-Match") or "").replace(" ", "").split(","):
        return Response(304, b"", content_type, {**HEADERS, "ETag": tag})
    return Response(200, body, content_type, {**HEADERS, "ETag": tag})
