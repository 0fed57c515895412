"""User cost tables (`--cost NAME=FILE`): a per-layer, per-width cost the program can budget
beside the built-in ones (`size`, `bops`), e.g. a latency measured on the target device.

The file is CSV (UTF-8) with a header naming the columns `layer`, `w_bits`, `value` in any order,
and optionally `a_bits`; no other column. One row per (layer, w_bits) — per (layer, w_bits,
a_bits) with an `a_bits` column, for activation widths: a candidate is then a (w_bits, a_bits)
pair, and the row of that pair is used (today every decided layer runs at one activation
width: the rows at that width). A table without `a_bits` holds for every activation width.

    layer,w_bits,value
    layer1.0.conv1,2,0.12
    layer1.0.conv1,4,0.19

Rules, each broken one a one-line InputError naming the file: every decided layer has a row at
every candidate width; every layer named is a decided or fixed layer of the set-up (fixed
layers' rows are kept in `rows` but are not part of the program); no (layer, w_bits[, a_bits])
twice; values are finite, non-negative numbers; widths are integers in 1..32 (rows at widths
that are not candidates are kept in `rows` and ignored by the program). At most MAX_BYTES and
MAX_ROWS. Plain text only: no pickle, nothing evaluated.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError, UsageError
from .plaindata import read_text_file

MAX_BYTES = 64 * 2 ** 20
MAX_ROWS = 1_000_000
RESERVED = ("size", "bops")   # built-in costs
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
REQUIRED = ("layer", "w_bits", "value")
OPTIONAL = ("a_bits",)

Key = Tuple[str, int, Optional[int]]


@dataclass
class CostTable:
    """One cost table, read and checked.

    `values`: float64 array [decided layers x candidates] in the caller's orders: the cost of
    layer l at candidate k (read_cost_table: which rows that is with an a_bits column);
    `rows`: every row of the file, keyed (layer, w_bits, a_bits) with a_bits None when the file
    has no a_bits column; `has_a_bits`: whether it has one; `a_bits`: the one activation width
    whose rows `values` holds (None without the column, or when the candidates differ in it)."""

    name: str
    path: str
    values: np.ndarray
    rows: Dict[Key, float] = field(default_factory=dict)
    has_a_bits: bool = False
    a_bits: Optional[int] = None

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


def check_cost_name(name: str) -> str:
    """`name` when it can name a cost (lower-case letters, digits, _; starts with a letter; at
    most 32 characters; not a built-in cost), else a UsageError."""
    if not NAME_RE.match(name):
        raise UsageError(f"cost name {name!r}: use lower-case letters, digits and _, starting with a letter "
                         f"(at most 32 characters)")
    if name in RESERVED:
        raise UsageError(f"cost name {name!r} is a built-in cost ({', '.join(RESERVED)}); choose another name")
    return name


def parse_cost_option(text: str) -> Tuple[str, str]:
    """`"latency=path.csv"` -> ("latency", "path.csv"); a UsageError for anything else."""
    name, sep, path = text.partition("=")
    name = name.strip()
    if not sep or not name or not path.strip():
        raise UsageError(f"cost {text!r}: give NAME=FILE, e.g. latency=latency.csv", params=("cost",))
    check_cost_name(name)
    return name, path.strip()


def parse_cost_options(texts: Sequence[str]) -> List[Tuple[str, str]]:
    """Several `NAME=FILE`, each name once."""
    out = [parse_cost_option(t) for t in texts]
    names = [n for n, _ in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"cost {twice[0]!r} given more than once", params=("cost",))
    return out


def _some(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _read_text(path: Path, where: str) -> str:
    if not path.is_file():
        raise InputError(f"{where}: file not found")
    return read_text_file(path, where, MAX_BYTES, InputError)[0]


def _int_field(v: str, col: str, where: str, line: int) -> int:
    try:
        b = int(v)
    except ValueError:
        raise InputError(f"{where}: line {line}: {col} {v!r} is not an integer") from None
    if not 1 <= b <= 32:
        raise InputError(f"{where}: line {line}: {col} {b} is outside 1..32")
    return b


def _value(v: str, where: str, line: int) -> float:
    try:
        x = float(v)
    except ValueError:
        raise InputError(f"{where}: line {line}: value {v!r} is not a number") from None
    if not math.isfinite(x):
        raise InputError(f"{where}: line {line}: value {v!r} is not finite")
    if x < 0:
        raise InputError(f"{where}: line {line}: value {v} is negative (costs are non-negative)")
    return x


def _header(row: List[str], where: str) -> List[str]:
    cols = [c.strip() for c in row]
    twice = sorted({c for c in cols if cols.count(c) > 1})
    if twice:
        raise InputError(f"{where}: column {twice[0]!r} appears twice in the header")
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise InputError(f"{where}: the header lacks column{'s' * (len(missing) > 1)} {', '.join(missing)} "
                         f"(it needs {', '.join(REQUIRED)}, optionally {', '.join(OPTIONAL)}; the first line is "
                         f"the header)")
    extra = [c for c in cols if c not in REQUIRED + OPTIONAL]
    if extra:
        raise InputError(f"{where}: unknown column{'s' * (len(extra) > 1)} {_some([repr(c) for c in extra])} "
                         f"(columns: {', '.join(REQUIRED)}, optionally {', '.join(OPTIONAL)})")
    return cols


def read_rows(path: str | Path, name: str) -> Tuple[Dict[Key, float], Dict[Key, int], bool]:
    """Every row of a cost table, checked on its own: ({key: value}, {key: line}, has_a_bits)."""
    p = Path(path)
    where = f"cost table {name} ({p})"
    text = _read_text(p, where)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: Dict[Key, float] = {}
    lines: Dict[Key, int] = {}
    try:
        header = next(reader, None)
        if header is None or not any(c.strip() for c in header):
            raise InputError(f"{where}: empty; the first line must be the header {','.join(REQUIRED)}")
        cols = _header(header, where)
        at = {c: cols.index(c) for c in cols}
        has_a = "a_bits" in at
        for row in reader:
            line = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(cols):
                raise InputError(f"{where}: line {line}: {len(row)} fields, the header has {len(cols)}")
            if len(rows) >= MAX_ROWS:
                raise InputError(f"{where}: more than {MAX_ROWS:,} rows; refused")
            layer = row[at["layer"]].strip()
            if not layer:
                raise InputError(f"{where}: line {line}: empty layer name")
            w = _int_field(row[at["w_bits"]].strip(), "w_bits", where, line)
            a = _int_field(row[at["a_bits"]].strip(), "a_bits", where, line) if has_a else None
            key = (layer, w, a)
            if key in rows:
                what = f"{layer} at w_bits {w}" + (f", a_bits {a}" if has_a else "")
                raise InputError(f"{where}: {what} appears twice (lines {lines[key]} and {line})")
            rows[key] = _value(row[at["value"]].strip(), where, line)
            lines[key] = line
    except csv.Error as exc:
        raise InputError(f"{where}: not readable as CSV at line {reader.line_num}: {exc}") from None
    return rows, lines, has_a


def read_cost_table(path: str | Path, name: str, decided_names: Sequence[str], candidates: Sequence[int],
                    a_bits: Union[None, int, Sequence[int]] = None, fixed_names: Sequence[str] = ()) -> CostTable:
    """The cost table `name` at `path` for a set-up's decided layers (in order) and candidate
    widths (in order): `.values[l, k]` is layer l's cost at candidate k.

    `a_bits`: the activation width of the candidates, one int for all of them or one per
    candidate (an option space whose candidates are (weight, activation) pairs: `candidates`
    then holds their weight widths, repeated as needed). With an a_bits column, candidate k
    uses the row (layer, candidates[k], its a_bits); with None, each (layer, w_bits) must have
    one row, whatever its a_bits. Without the column the rows hold for every activation width.
    `fixed_names`: layers the file may also name (kept in `.rows` only)."""
    check_cost_name(name)
    rows, _, has_a = read_rows(path, name)
    where = f"cost table {name} ({Path(path)})"
    decided = set(decided_names)
    known = decided | set(fixed_names)
    unknown = sorted({k[0] for k in rows if k[0] not in known})
    if unknown:
        raise InputError(f"{where}: {len(unknown)} unknown layer{'s' * (len(unknown) > 1)} "
                         f"{_some(unknown)} (not a decided or fixed layer; `clado layers` lists them)")
    acts: List[Optional[int]] = (list(a_bits) if isinstance(a_bits, (list, tuple)) else [a_bits] * len(candidates))
    if len(acts) != len(candidates):
        raise ValueError(f"{len(candidates)} candidates but {len(acts)} activation widths")
    by_width: Dict[Tuple[str, int], Dict[Optional[int], float]] = {}
    for (layer, w, a), v in rows.items():
        by_width.setdefault((layer, w), {})[a] = v
    values = np.full((len(decided_names), len(candidates)), np.nan)
    missing: List[str] = []
    for l, layer in enumerate(decided_names):
        for k, (w, a) in enumerate(zip(candidates, acts)):
            found = by_width.get((layer, int(w)), {})
            if has_a and a is None and len(found) > 1:
                raise InputError(f"{where}: {layer} at w_bits {int(w)} has rows for several a_bits; the program "
                                 f"needs one (activation width not given)")
            v = found.get(a) if has_a and a is not None else next(iter(found.values()), None)
            if v is None:
                missing.append(f"{layer}@{int(w)}" + (f"a{a}" if has_a and a is not None else ""))
            else:
                values[l, k] = v
    if missing:
        raise InputError(f"{where}: {len(missing)} (layer, w_bits{', a_bits' if has_a else ''}) "
                         f"entr{'ies' if len(missing) > 1 else 'y'} missing: {_some(missing)} "
                         f"(every decided layer needs a row per candidate width)")
    single = acts[0] if has_a and len(set(acts)) == 1 else None
    return CostTable(name, str(path), values, rows, has_a, single)
