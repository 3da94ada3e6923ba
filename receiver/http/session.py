"""The console's session: the API key it logged in with, kept in an HttpOnly, SameSite=Strict
cookie, and the CSRF token that unsafe requests made with that cookie must carry (a header the
console's pages hold and another site cannot read)."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

COOKIE = "smsr_console"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cookie_secret(request: web.Request) -> str | None:
    return request.cookies.get(COOKIE) or None


def csrf_token(secret: str) -> str:
    """Derived from the key itself: every instance checks it the same way, no state is kept,
    and only who holds the key (the cookie, unreadable to scripts) is given it in a page."""
    return hashlib.sha256(b"smsr-console-csrf:" + secret.encode()).hexdigest()


def csrf_ok(secret: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given, csrf_token(secret))


def set_session(response: web.StreamResponse, secret: str, secure: bool) -> None:
    response.set_cookie(COOKIE, secret, httponly=True, samesite="Strict", secure=secure, path="/")


def clear_session(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")


# The console's and the docs' pages load nothing from elsewhere, run no inline script, and may
# not be framed by another site (clickjacking). Swagger UI sets inline styles and data: images.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
        " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none';"
        " form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
