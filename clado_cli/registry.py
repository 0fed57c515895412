"""A small name -> factory table, as timm does for models: register with a decorator,
look up by name, and fail with the close matches when a name is unknown."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Dict, Generic, List, TypeVar

from .errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._table: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._table:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._table[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._table:
            raise UsageError(unknown_name_message(self.kind, name, self.names()))
        return self._table[name]

    def __contains__(self, name: str) -> bool:
        return name in self._table

    def names(self, pattern: str = "*", ordered: bool = False) -> List[str]:
        """Registered names matching `pattern`: sorted, or in registration order."""
        found = [n for n in self._table if fnmatch.fnmatch(n, pattern)]
        return found if ordered else sorted(found)

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests and plugins that register temporarily)."""
        self._table.pop(name, None)


def unknown_name_message(kind: str, name: str, known: List[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known[:12])}"
    return f"unknown {kind} {name!r}{hint}"
