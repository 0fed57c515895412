"""Limits on the structure of any file clado reads as data (config, decision, sidecar): depth,
integer size and NUL characters, checked without recursion so a hostile file can neither
overflow the stack nor slip a path with a NUL byte or an integer beyond 64 bits through."""
from __future__ import annotations

import json
from typing import Any, Tuple, Type

from .errors import CladoError

MAX_DEPTH = 32
INT_LIMIT = 2 ** 63


def check_plain(obj: Any, where: str, error: Type[CladoError]) -> Any:
    """`obj` unchanged, or `error` naming the first problem and its path."""
    stack = [(obj, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise error(f"{where}: nested more than {MAX_DEPTH} levels deep at {path or '(top level)'}")
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and "\x00" in k:
                    raise error(f"{where}: a key under {path or '(top level)'} holds a NUL character")
                stack.append((v, f"{path}.{k}" if path else str(k), depth + 1))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                stack.append((v, f"{path}[{i}]", depth + 1))
        elif isinstance(node, str):
            if "\x00" in node:
                raise error(f"{where}: {path or '(top level)'} holds a NUL character")
        elif isinstance(node, int) and not isinstance(node, bool):
            if not -INT_LIMIT <= node < INT_LIMIT:
                raise error(f"{where}: {path or '(top level)'} is an integer beyond 64 bits")
    return obj


def load_json_text(text: str, where: str, error: Type[CladoError]) -> Any:
    """json.loads with the limits above (deep nesting is refused, not a RecursionError)."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise error(f"{where}: nested too deeply to read") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise error(f"{where} is not valid JSON: {exc}") from None
    return check_plain(obj, where, error)


def validate_schema(doc: Any, schema: dict, what: str, error: Type[CladoError]) -> Any:
    """`doc` against a JSON Schema; the first violation as one line naming its path."""
    import jsonschema

    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise error(f"{what}: {path}: {exc.message}") from None
    return doc


def read_text_file(path, where: str, max_bytes: int, error: Type[CladoError]) -> Tuple[str, bytes]:
    """A data file's text (UTF-8, a BOM allowed) and its bytes, read at most `max_bytes`: one-line
    errors prefixed with `where` for a file that cannot be read, is larger, is not UTF-8 or holds a
    NUL character. The caller checks that the file exists (its own wording)."""
    from pathlib import Path

    try:
        with Path(path).open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        limit = f"{max_bytes // 2 ** 20} MiB" if max_bytes % 2 ** 20 == 0 else f"{max_bytes:,} bytes"
        raise error(f"{where}: larger than {limit}; refused")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not a UTF-8 text file (invalid byte at {exc.start})") from None
    if "\x00" in text:
        raise error(f"{where}: holds a NUL character; not a text file")
    return text, raw
