"""URL helpers: password masking for logs, and splitting Go-style multi-host URLs."""

from __future__ import annotations

import logging
import re

__all__ = ["MaskSecretsFilter", "host_of", "mask_secrets", "mask_url", "scheme_of"]

MASK = "****"
_REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "redis+sentinel", "rediss+sentinel")
_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*)://(?P<userinfo>[^/\s?#'\"]*)@")
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:[a-z_\-]*pass(?:word)?|[a-z_\-]*secret[a-z_\-]*|[a-z_\-]*token|"
    r"aws_secret_access_key|access_key)=)([^&\s'\"]+)"
)


def scheme_of(url: str) -> str:
    """The lower-cased scheme of ``url`` ('' when it has none)."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def host_of(url: str) -> str:
    """The lower-cased host of ``url``, without user info or port ('' when it has none)."""
    _, sep, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].rpartition("@")[2] if sep else ""
    if netloc.startswith("["):
        return netloc[1:].partition("]")[0].lower()
    return netloc.partition(":")[0].lower()


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    if not userinfo:
        return match.group(0)
    user, colon, _password = userinfo.partition(":")
    if colon:
        return f"{scheme}://{user}:{MASK}@"
    if scheme.lower() in _REDIS_SCHEMES:
        # Go Machinery reads redis://secret@host as a password with no user.
        return f"{scheme}://{MASK}@"
    return match.group(0)


def mask_url(url: str) -> str:
    """``url`` with passwords and secret query parameters replaced by ``****``."""
    return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """Mask every URL password and secret query parameter found in ``text``."""
    if "@" not in text and "=" not in text:
        return text
    text = _URL.sub(_mask_userinfo, text)
    return _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, text)


class MaskSecretsFilter(logging.Filter):
    """A logging filter that masks URL passwords in messages and their arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
            except (TypeError, ValueError):
                return True
            record.args = None
        if isinstance(record.msg, str):
            record.msg = mask_secrets(record.msg)
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        return True
