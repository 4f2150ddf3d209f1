"""HTTP basic auth for the whole dashboard and the CSRF token its forms carry."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AUTH_ENV", "BasicAuth", "SecurityHeaders", "parse_auth"]

AUTH_ENV = "MACHINERY_DASHBOARD_AUTH"
"""The environment variable holding ``user:password`` when ``--auth`` is not given."""


def parse_auth(text: str) -> tuple[str, str]:
    """``user:password`` as a pair; raises ValueError (without echoing the password)."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("the dashboard's auth must be USER:PASSWORD, both non-empty")
    return user, password


class BasicAuth:
    """Answers 401 with ``WWW-Authenticate: Basic`` unless the request carries the credentials."""

    def __init__(self, app: ASGIApp, user: str, password: str) -> None:
        self.app = app
        self._expected = f"{user}:{password}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = b"authentication required\n"
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="machinery-aio", charset="UTF-8"'),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, encoded = value.partition(b" ")
                if scheme.lower() != b"basic":
                    return False
                try:
                    given = base64.b64decode(encoded.strip(), validate=True)
                except (binascii.Error, ValueError):
                    return False
                return hmac.compare_digest(given, self._expected)
        return False


HEADERS = [
    # Scripts and styles only from the dashboard's own files: even if a value escaped the
    # escaping, the browser would not run it. No framing (clickjacking the actions).
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds :data:`HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


def new_csrf_token() -> str:
    """A random token for one app's forms: a page from another site cannot read it."""
    return secrets.token_urlsafe(32)


def csrf_ok(expected: str, given: object) -> bool:
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())
