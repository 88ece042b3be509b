"""Reading what an operator hands the tool: stack files, connections documents.

Every file is bounded, regular and UTF-8, and every document shallow, so a wrong
path (``/dev/zero``, a FIFO, a huge or binary file, a nesting bomb) is one line
naming the file and the rule, exit 2, before anything is created: never a hang and
never a traceback. Messages never quote the content (it may hold a secret).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, Final

import yaml

from tenant_infra.errors import InvalidInput

#: The largest file read: a stack file or a fleet's connections documents.
MAX_BYTES: Final = 16 * 1024 * 1024
#: The deepest nesting of lists and mappings any document of the tool has is 6.
MAX_DEPTH: Final = 32
#: Values in one document, counted as read: YAML aliases can make a small file stand
#: for billions of them ("billion laughs").
MAX_VALUES: Final = 1_000_000
#: Characters of text in one document, counted as read (an alias to a long string
#: repeated stands for all its copies, which writing the file back would write out).
MAX_TEXT: Final = 4 * MAX_BYTES


def read_text(path: Path | str, what: str, limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of regular file ``path`` (``-``: standard input), at most ``limit``
    bytes."""
    where = str(path)
    if where == "-":
        return _decoded(sys.stdin.buffer.read(limit + 1), what, where, limit)
    try:
        # Non-blocking, so a FIFO with no writer cannot hang the open; then the
        # descriptor itself is checked (no race with a path swapped after a stat).
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {where!r}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{what} {where!r} is not a regular file")
        if info.st_size > limit:
            raise InvalidInput(f"{what} {where!r} is larger than {limit} bytes")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {where!r}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return _decoded(data, what, where, limit)


def _decoded(data: bytes, what: str, where: str, limit: int) -> str:
    if len(data) > limit:
        raise InvalidInput(f"{what} {where!r} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} {where!r} is not UTF-8 (byte {exc.start})") from None


def read_yaml(path: Path | str, what: str, *, libyaml: bool = False) -> Any:
    """``libyaml``: parse with PyYAML's C loader when it has one (about ten times faster,
    for fleet-sized reads); a document it refuses is read again by the pure-Python
    loader, so every error is worded the one way."""
    text = read_text(path, what)
    loader = getattr(yaml, "CSafeLoader", None) if libyaml else None
    if loader is not None:
        try:
            value = yaml.load(text, Loader=loader)  # a safe loader, in C
        except Exception:  # the pure loader below says what is wrong
            pass
        else:
            return shallow(value, what, str(path))
    return load_yaml(text, what, str(path))


def read_json(path: Path | str, what: str) -> Any:
    return load_json(read_text(path, what), what, str(path))


def load_json(text: str, what: str, where: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # Line and column only: the text is never quoted.
        raise InvalidInput(
            f"{what} {where!r} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise InvalidInput(f"{what} {where!r} is nested deeper than {MAX_DEPTH}") from None
    except ValueError:  # a number too long to convert, say
        raise InvalidInput(f"{what} {where!r} holds a value that cannot be read") from None
    return shallow(value, what, where)


def load_yaml(text: str, what: str, where: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid"
        raise InvalidInput(f"{what} {where!r} is not valid YAML: {problem}{at}") from None
    except RecursionError:
        raise InvalidInput(f"{what} {where!r} is nested deeper than {MAX_DEPTH}") from None
    except (ValueError, OverflowError):  # a date out of range, a number too long
        raise InvalidInput(
            f"{what} {where!r} holds a value that cannot be read (a date or number out of "
            "range?)"
        ) from None
    return shallow(value, what, where)


def shallow(value: Any, what: str, where: str) -> Any:
    """``value`` if no list or mapping in it is nested deeper than :data:`MAX_DEPTH`,
    and it holds at most :data:`MAX_VALUES` values and :data:`MAX_TEXT` characters."""
    level, seen, text = [value], 1, 0
    for _depth in range(MAX_DEPTH + 1):
        deeper: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                deeper.extend(item.values())
                text += sum(len(k) for k in item if isinstance(k, str))
            elif isinstance(item, list):
                deeper.extend(item)
            elif isinstance(item, str):
                text += len(item)
            if len(deeper) + seen > MAX_VALUES:
                raise InvalidInput(f"{what} {where!r} holds more than {MAX_VALUES} values")
            if text > MAX_TEXT:
                raise InvalidInput(f"{what} {where!r} holds more than {MAX_TEXT} characters")
        if not deeper:
            return value
        seen += len(deeper)
        level = deeper
    raise InvalidInput(f"{what} {where!r} is nested deeper than {MAX_DEPTH}")
