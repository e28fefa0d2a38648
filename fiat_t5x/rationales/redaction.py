"""Keeping β's credentials out of every message, log line and file.

A secret is the API key, or a credential-like value in the query string of the base URL
(`?key=...`, `?sig=...`). `Redactor.redact` removes every stretch of text of
`MIN_FRAGMENT` or more characters that also occurs inside a secret, not only whole
occurrences: a server may echo the Authorization header in an error body, show a masked key
("sk-proj-****abcd"), or a message may be cut in the middle of the key. `Redactor.cut`
redacts first, then cuts, then redacts again, so no cut can expose a prefix of the key.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from typing import Any

REDACTED = "<redacted>"
# Fragments this long that occur inside a secret are redacted wherever they appear.
MIN_FRAGMENT = 4
# Query parameters whose values are credentials (Azure SAS `sig`, Google `key`, ...).
_CREDENTIAL_PARAMS = ("key", "token", "secret", "sig", "signature", "password", "auth", "code")


class Secret:
    """Holds a credential; every way of printing or pickling it shows nothing of it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a secret is not picklable; read it from the environment instead")


class Redactor:
    """Removes the given secrets, and any fragment of them, from text.

    Args:
      secrets: values never to show. Empty strings are ignored; a secret shorter than
        MIN_FRAGMENT is only removed where it occurs whole.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._fragments = {
            s[i : i + MIN_FRAGMENT] for s in self._secrets for i in range(len(s) - MIN_FRAGMENT + 1)
        }

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"

    def __reduce__(self) -> Any:
        raise TypeError("a Redactor holds secrets and is not picklable")

    def redact(self, text: str) -> str:
        """`text` with every secret, and every stretch of MIN_FRAGMENT+ characters of one,
        replaced by REDACTED (adjacent or overlapping stretches become one placeholder)."""
        if not self._secrets:
            return text
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        if not self._fragments:
            return text
        hidden = bytearray(len(text))
        for i in range(len(text) - MIN_FRAGMENT + 1):
            if text[i : i + MIN_FRAGMENT] in self._fragments:
                hidden[i : i + MIN_FRAGMENT] = b"\x01" * MIN_FRAGMENT
        if not any(hidden):
            return text
        out, i = [], 0
        while i < len(text):
            if hidden[i]:
                while i < len(text) and hidden[i]:
                    i += 1
                out.append(REDACTED)
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    def cut(self, text: str, limit: int) -> str:
        """At most `limit` characters of redacted `text` (plus "..." when cut), with no fragment
        of a secret at the cut: redact, then cut, then redact again."""
        text = self.redact(text)
        if len(text) > limit:
            text = self.redact(text[:limit]) + "..."
        return text


def credential_query_values(url: str) -> list[str]:
    """Values of the URL's query parameters that look like credentials (by parameter name)."""
    query = urllib.parse.urlsplit(url).query
    return [
        value
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=False)
        if any(word in name.lower() for word in _CREDENTIAL_PARAMS)
    ]


def public_url(url: str) -> str:
    """The URL as it may be logged or stored: no user info, credential-like query values
    replaced by REDACTED, other query parameters (e.g. Azure's api-version) kept."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "&".join(
        f"{name}={REDACTED if any(w in name.lower() for w in _CREDENTIAL_PARAMS) else value}"
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
