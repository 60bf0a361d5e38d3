"""The review web page: static files served by the daemon itself (no CDN), under a strict CSP."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from starlette.responses import FileResponse, RedirectResponse, Response

__all__ = ["CONTENT_SECURITY_POLICY", "review_page_router"]

STATIC = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def review_page_router() -> APIRouter:
    """GET /review (the page) and /review/static/NAME (its assets); nothing outside STATIC is served."""
    router = APIRouter(include_in_schema=False)
    names = {p.name: p for p in STATIC.iterdir() if p.is_file() and p.suffix in _TYPES} if STATIC.is_dir() else {}

    @router.get("/review")
    async def page() -> Response:
        if "review.html" not in names:
            raise HTTPException(404, "the review page is not installed")
        return FileResponse(names["review.html"], media_type=_TYPES[".html"], headers=_HEADERS)

    @router.get("/review/")
    async def page_slash() -> Response:
        return RedirectResponse("/review")

    @router.get("/review/static/{name}")
    async def asset(name: str) -> Response:
        path = names.get(name)
        if path is None:
            raise HTTPException(404, f"no asset {name!r}")
        return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)

    return router
