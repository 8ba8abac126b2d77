"""Reading the text files a user hands archgen (specs, search configs): size limits, JSON and
YAML parsing that cannot recurse or expand without bound, and short excerpts of bad values.

Every problem raises the caller's :class:`archgen.errors.UserError` subclass with one line that
names the file; a bad value is quoted by :func:`excerpt`, never whole (a 5 MB spec or a YAML
alias bomb must not print megabytes).
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

from archgen.errors import UserError

MAX_TEXT_FILE_BYTES = 4 * 1024 * 1024
# Containers plus scalars after YAML aliases are expanded; a real spec or search config has a
# few hundred. A 484-byte alias bomb expands to hundreds of millions.
MAX_DOCUMENT_NODES = 100_000
MAX_DOCUMENT_DEPTH = 64

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 2
_REPR.repr_int = lambda value, level: int_text(value)  # type: ignore[method-assign]


def excerpt(value: Any, limit: int = 80) -> str:
    """``value`` as one short line for an error message: at most ``limit`` characters, control
    characters, newlines and undecodable bytes escaped (``repr`` style), numpy values unwrapped,
    containers and huge integers never rendered whole."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        if getattr(value, "shape", None) == ():
            value = value.item()  # a numpy scalar
        else:
            flat = value.reshape(-1)[:6].tolist()
            text = f"array(shape={list(value.shape)}, dtype={value.dtype}, first={flat!r})"
            return _fit(text, limit)
    if isinstance(value, int) and not isinstance(value, bool):
        text = int_text(value)
    elif isinstance(value, BaseException):
        text = repr((str(value) or type(value).__name__)[: limit * 2])[1:-1]
    elif isinstance(value, str):
        text = repr(value[: limit * 2])
    elif isinstance(value, (bytes, bytearray)):
        text = repr(bytes(value[: limit * 2]))
    else:
        text = _REPR.repr(value)
    return _fit(text, limit)


def _fit(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def int_text(value: int) -> str:
    """``repr`` of an int, or its size in bits for one too long to print (Python refuses to
    convert ints over 4,300 digits to text)."""
    if -(10**40) < value < 10**40:
        return repr(value)
    return f"{'-' if value < 0 else ''}<integer of {value.bit_length()} bits>"


def clip(text: str, limit: int = 80) -> str:
    """Plain text on one line (control characters escaped), cut to ``limit`` characters (for
    lists of names built into a message)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit * 2])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_text(path: str | Path, what: str, error: type[UserError] = UserError,
              max_bytes: int = MAX_TEXT_FILE_BYTES) -> str:
    """The UTF-8 text of a user's file, or ``error`` naming the file and the problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise error(f"{path}: {what} is not a regular file")
        if size > max_bytes:
            raise error(f"{path}: {what} is {size:,} bytes; the limit is {max_bytes:,}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (PermissionError, IsADirectoryError, OSError) as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or type(exc).__name__})") from None
    if b"\x00" in raw:
        raise error(f"{path}: {what} is a binary file, not JSON or YAML text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None


def parse_json(text: str, where: str, error: type[UserError] = UserError) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply (limit {MAX_DOCUMENT_DEPTH} levels)") from None
    check_document(data, where, error)
    return data


def parse_yaml(text: str, where: str, error: type[UserError] = UserError) -> Any:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise error(f"{where}: invalid YAML{at}: {excerpt(problem, 80)}") from None
    except RecursionError:
        raise error(f"{where}: YAML nested too deeply (limit {MAX_DOCUMENT_DEPTH} levels)") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp out of range
        raise error(f"{where}: invalid YAML value ({excerpt(str(exc), 80)})") from None
    check_document(data, where, error)
    return data


def check_document(data: Any, where: str, error: type[UserError] = UserError) -> None:
    """Refuse documents deeper than MAX_DOCUMENT_DEPTH or larger than MAX_DOCUMENT_NODES once
    YAML aliases are expanded (shared sub-documents count once per reference)."""
    budget = MAX_DOCUMENT_NODES
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise error(
                f"{where}: the document expands to more than {MAX_DOCUMENT_NODES:,} values "
                "(YAML aliases?); archgen refuses it"
            )
        if depth > MAX_DOCUMENT_DEPTH:
            raise error(f"{where}: nested too deeply (limit {MAX_DOCUMENT_DEPTH} levels)")
        if isinstance(node, dict):
            for k, v in node.items():
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)


def load_document(path: str | Path, what: str, error: type[UserError] = UserError) -> Any:
    """A JSON or YAML file (by suffix; an unknown suffix is tried as JSON, then YAML)."""
    path = Path(path)
    text = read_text(path, what, error)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text, str(path), error)
    if suffix == ".json":
        return parse_json(text, str(path), error)
    try:
        return parse_json(text, str(path), error)
    except error:
        return parse_yaml(text, str(path), error)
