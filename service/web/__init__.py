"""The web page at `/`: static HTML, CSS and JS from this package, no build step, no CDN.

The page calls the same JSON routes as any client (`/models`, `/explanations/{name}`), so it
holds no data itself: `/` and the files under `/ui/` are open without a token (service.auth
reads `OPEN_PATHS` and `OPEN_PREFIX` from here) and the page sends the token with its API calls.
Example: ``add_page_routes(app)`` in ``create_app``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
OPEN_PATHS = frozenset({"/"})
OPEN_PREFIX = "/ui/"  # the mount below: StaticFiles serves files in STATIC only (no traversal)

# The page loads only its own files and talks only to its own origin; images are data:/blob:
# URLs (the overlays come back as base64, the upload is shown from the file itself).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_page_routes(app: FastAPI) -> None:
    """`GET /` (index.html) and `GET /ui/<file>` (app.js, style.css)."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The page: pick a model, upload an image or fill a row, see the explanations."""
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount(OPEN_PREFIX.rstrip("/"), StaticFiles(directory=STATIC), name="ui")
