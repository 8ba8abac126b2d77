"""Passwords out of every text archgen shows or writes: storage URLs (``--storage``), driver
error messages, log lines. Pure Python; the CLI runs every message through :func:`redact_text`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

_SCHEME_RE = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*://")
_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")
_SECRET_WORD = r"[\w.\-]*(?:password|passwd|pwd|passphrase|secret|token)"
_VALUE = r"""(?:'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s&;,'"}\])]+)"""
# keyword=value (libpq conninfo, URL queries, log lines): ``password=xyz``, ``sslpassword = 'x y'``
_KV_SECRET_RE = re.compile(rf"(?i)\b({_SECRET_WORD})(\s*=\s*)({_VALUE})")
# mappings (Python repr, JSON): ``'password': 'xyz'``, ``"password": "xyz"``
_MAP_SECRET_RE = re.compile(rf"""(?i)(['"])({_SECRET_WORD})\1(\s*:\s*)({_VALUE})""")
_SECRET_KEY_RE = re.compile(r"(?i)^[\w.\-]*(?:pass|password|passwd|pwd|passphrase|secret|token)$")
_PARAM_KEY_RE = re.compile(r"^[A-Za-z_][\w.\-%]*$")
_MIN_LITERAL_SECRET = 4  # shorter literal secrets are not searched for in free text


def redact(url: object) -> str:
    """``url`` (any value given as ``--storage``) with every password replaced by ``***``.

    The user-info password (everything between the first ``:`` after ``scheme://`` and the
    *last* ``@``, so raw ``@ : / ?`` in a password are covered, as is an empty user name);
    query parameters named like a secret (``password``, ``passwd``, ``sslpassword``, ``pwd``,
    ``...secret``, ``...token``; case-insensitive, percent-encoded names too) and query values
    that embed a libpq ``password=...`` pair; ``password=...`` pairs anywhere (a libpq conninfo
    string given instead of a URL). A string without ``scheme://`` is redacted conservatively:
    everything between its first ``:`` and its last ``@``. When ambiguous (an ``@`` in the query),
    more is hidden rather than less.
    """
    s = url if isinstance(url, str) else str(url)
    m = _SCHEME_RE.match(s)
    head, rest = (s[: m.end()], s[m.end():]) if m else ("", s)
    span = _password_span(rest)
    if span is not None:
        start, at = span
        out, tail = head + rest[:start] + "***@", rest[at + 1:]
    else:
        out, tail = head, rest
    q = tail.find("?")
    if m and q >= 0:
        tail = tail[: q + 1] + _redact_query(tail[q + 1:])
    return _scrub_pairs(out + tail)


def redact_text(text: object, secrets: Iterable[str] = ()) -> str:
    """``text`` (an error message, a log line) with the passwords of every URL in it, every
    ``password=...`` pair and every literal string of ``secrets`` replaced by ``***``."""
    s = text if isinstance(text, str) else str(text)
    s = _URL_IN_TEXT_RE.sub(lambda m: redact(m.group(0)), s)
    s = _scrub_pairs(s)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_LITERAL_SECRET:
            s = s.replace(secret, "***")
    return s


def _password_span(rest: str) -> tuple[int, int] | None:
    """(start of the password's ``:``, index of the last ``@``) in the part after ``scheme://``,
    or None when there is no ``user:password@``."""
    at = rest.rfind("@")
    if at < 0:
        return None
    colon = rest.find(":", 0, at)
    return None if colon < 0 else (colon + 1, at)


def _redact_query(query: str) -> str:
    parts = re.split(r"([&;])", query)
    out: list[str] = []
    hiding = False  # the segments after a secret that cannot be parameters of their own
    for i in range(0, len(parts), 2):
        seg, sep = parts[i], (parts[i + 1] if i + 1 < len(parts) else "")
        key, eq, value = seg.partition("=")
        if hiding and not (eq and _PARAM_KEY_RE.match(key)):
            continue  # ``password=a&b`` with a raw ``&``: ``b`` belongs to the password
        hiding = False
        if eq and _SECRET_KEY_RE.match(unquote_plus(key).strip()):
            out.append(f"{key}=***{sep}")
            hiding = True
        elif eq and (_KV_SECRET_RE.search(unquote_plus(value)) or _MAP_SECRET_RE.search(unquote_plus(value))):
            out.append(f"{key}=***{sep}")
        else:
            out.append(seg + sep)
    return "".join(out)


def _scrub_pairs(s: str) -> str:
    s = _KV_SECRET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", s)
    return _MAP_SECRET_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}'***'", s)


def secrets_of(url: str) -> set[str]:
    """The literal passwords of ``url`` in every spelling a driver may echo (raw, decoded)."""
    found: set[str] = set()
    m = _SCHEME_RE.match(url)
    rest = url[m.end():] if m else url
    span = _password_span(rest)
    if span is not None:
        found.add(rest[span[0]: span[1]])
    q = rest.find("?", span[1] if span else 0)
    if q >= 0:
        for seg in re.split(r"[&;]", rest[q + 1:]):
            key, eq, value = seg.partition("=")
            if eq and _SECRET_KEY_RE.match(unquote_plus(key).strip()):
                found.add(value)
    try:
        from sqlalchemy.engine.url import make_url

        password = make_url(url).password
        if password:
            found.add(str(password))
    except Exception:  # an unparsable URL has no password to SQLAlchemy
        pass
    return {v for raw in found for v in (raw, unquote(raw), unquote_plus(raw)) if v}
