"""URL redaction: credentials in an endpoint URL never reach the database, logs, artifacts or the console.

Some gateways want the API key in the URL (`?api-key=…`, `https://user:key@host`).
Everything seke stores, logs or shows passes URLs through `redact_url` (one
URL) or `redact_text` (free text such as an error message): the userinfo
becomes `***` and so do the values of query parameters whose names look like
credentials (key, token, secret, password, signature, auth, credential, session,
code). The real URL is used only for the request itself.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
_SECRET_PARAM = re.compile(r"key|token|secret|pass|sig|auth|credential|session|code", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def redact_url(url: str) -> str:
    """`url` with its userinfo and credential-like query values replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # unparseable: show nothing of it rather than a secret
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_pair(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if not equals:
        return MASK  # a bare token (`?abc123`) is as secret as a named one
    return f"{name}={MASK}" if _SECRET_PARAM.search(unquote(name)) else pair


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (error messages, reasons, log lines)."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)
