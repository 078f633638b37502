"""The page at ``/`` (and ``/ui``): three files from the package (``service/ui``), read once, served with a
strict Content-Security-Policy. It talks to the service's own API from the browser; no CDN, no
network beyond this origin, and the routes need no API key (the page asks for one when the API does).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

__all__ = ["CONTENT_SECURITY_POLICY", "router"]

router = APIRouter(include_in_schema=False)

# Own origin only. Images also from data: (the maps the API returns as base64 PNGs) and blob: (the
# previews of the user's own files); no inline script or style, no plugins, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_CONTENT = {name: (files("service.ui") / name).read_bytes() for name in _FILES}


def _file(name: str) -> Response:
    return Response(_CONTENT[name], media_type=_FILES[name], headers=SECURITY_HEADERS)


@router.get("/")
@router.get("/ui")
@router.get("/ui/")
async def index() -> Response:
    return _file("index.html")


@router.get("/ui/app.js")
async def script() -> Response:
    return _file("app.js")


@router.get("/ui/app.css")
async def stylesheet() -> Response:
    return _file("app.css")
