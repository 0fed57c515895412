"""Size budgets: parse what a user types (`4MB`, `4MiB`, `avg:4.5`, sweeps) into bytes.

A budget bounds the decided layers' weight bytes (docs/methods.md, "Sizes and budgets"). It is given either as a size
with a unit (`4MB` = 4·10⁶ B, `4MiB` = 4·2²⁰ B) or as an average bit width per decided weight
(`avg:4.5`), which becomes `floor(avg_bits · decided_numel / 8)` bytes.

Numbers are parsed as decimals, not floats, so `4.1MB` is 4100000 bytes, not 4099999.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import List, Optional, Tuple

from ..errors import UsageError

# Canonical spelling -> bytes per unit; matched case-insensitively.
SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
}
_UNIT_BY_LOWER = {unit.lower(): unit for unit in SIZE_UNITS}
_SIZE_FORMS = "a positive number with an optional unit B, KB, MB, GB, KiB, MiB, GiB (e.g. 4MB, 4MiB, 800KB, 123456)"
_LIST_FORMS = "a size such as 4MB, a list 2MB,3MB, a sweep 2MB:6MB:0.5MB, or the same after avg: in bits (avg:4.5, avg:2:8:0.5)"

AVG_PREFIX = "avg:"
MAX_SWEEP_POINTS = 1000
MAX_BYTES = 10**18  # far above any model; keeps a typo like 1e999999GB from building a giant int

_NUMBER_AND_UNIT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")


@dataclass(frozen=True)
class Budget:
    """A resolved budget: what the user gave, the decided bytes it allows (None when the size is
    not bounded) and the bounds on other costs (name, given, bound, unit; clado_cli.budgets)."""

    given: str
    bytes: Optional[int]
    bounds: tuple = ()

    def to_dict(self) -> dict:
        out = {"given": self.given, "bytes": self.bytes}
        if self.bounds:
            out["bounds"] = [dict(b) for b in self.bounds]
        return out


def _number_and_unit(text: str) -> Tuple[Decimal, str]:
    """`'1.5 MiB'` -> (Decimal('1.5'), 'MiB'); no unit means bytes. Sign is not checked here."""
    match = _NUMBER_AND_UNIT.match(text or "")
    number = _decimal(match.group(1)) if match else None
    if number is None or match.group(2).lower() not in _UNIT_BY_LOWER | {"": "B"}:
        raise UsageError(f"invalid size {text!r}: expected {_SIZE_FORMS}")
    return number, _UNIT_BY_LOWER.get(match.group(2).lower(), "B")


def _decimal(text: str) -> Optional[Decimal]:
    """A finite decimal of sane magnitude (|exponent| <= 30), or None."""
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return None
    if not number.is_finite() or (number != 0 and abs(number.adjusted()) > 30):
        return None
    return number


def _bits_number(text: str, given: str) -> Decimal:
    bits = _decimal(text)
    if bits is None:
        raise UsageError(f"invalid average bit width {given!r}: expected a positive number of bits per decided weight, e.g. avg:4.5")
    return bits


def _floor_int(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def _decimal_text(value: Decimal) -> str:
    """Shortest plain spelling of a decimal: 2.50 -> '2.5', 2E+1 -> '20'."""
    return format(value.normalize(), "f")


def parse_size(text: str) -> int:
    """Bytes in a size such as `4MB`, `4MiB`, `800kB`, `1.5GB`, `512B` or `123456`, rounded down."""
    number, unit = _number_and_unit(text)
    exact = number * SIZE_UNITS[unit]
    if exact > MAX_BYTES:
        raise UsageError(f"invalid size {text!r}: above {MAX_BYTES} bytes")
    size = _floor_int(exact)
    if size <= 0:
        raise UsageError(f"invalid size {text!r}: it must be at least 1 byte; expected {_SIZE_FORMS}")
    return size


def _positive_bits(text: str, given: str) -> Decimal:
    bits = _bits_number(text, given)
    if bits <= 0:
        raise UsageError(f"invalid average bit width {given!r}: it must be above zero")
    return bits


def _avg_bits_budget(bits: Decimal, given: str, decided_numel: int) -> Budget:
    if decided_numel <= 0:
        raise UsageError(f"cannot turn the average bit width {given!r} into bytes: there are {decided_numel} decided weights")
    size = _floor_int(bits * decided_numel / 8)
    if size < 1:
        raise UsageError(f"average bit width {given!r} over {decided_numel} decided weights is under 1 byte")
    return Budget(given=f"{AVG_PREFIX}{_decimal_text(bits)}", bytes=size)


def resolve_budget(size: Optional[str], avg_bits: Optional[float], decided_numel: int) -> Budget:
    """The budget from exactly one of a size (`'4MB'`) or an average bit width per decided weight."""
    if (size is None) == (avg_bits is None):
        raise UsageError("give exactly one budget: a size (e.g. 4MB) or an average bit width (e.g. 4.5)")
    if size is not None:
        return Budget(given=size, bytes=parse_size(size))
    return _avg_bits_budget(_positive_bits(str(avg_bits), str(avg_bits)), str(avg_bits), decided_numel)


def resolve_budget_spec(spec: str, decided_numel: int) -> Budget:
    """Resolve one item of `parse_budget_list`: a size, or `avg:<bits>`."""
    text = spec.strip()
    if text.lower().startswith(AVG_PREFIX):
        return _avg_bits_budget(_positive_bits(text[len(AVG_PREFIX):], spec), spec, decided_numel)
    return Budget(given=text, bytes=parse_size(text))


def sweep_points(start: Decimal, stop: Decimal, step: Decimal, text: str, what: str = "budget",
                 positive_start: bool = True) -> List[Decimal]:
    """start, start+step, ... up to stop inclusive (exact decimal arithmetic, so stop is hit exactly).
    `what` names the budget in errors; positive_start=False admits a start of 0 (rel: fractions)."""
    if positive_start and start <= 0:
        raise UsageError(f"invalid {what} sweep {text!r}: the start must be above zero")
    if step <= 0:
        raise UsageError(f"invalid {what} sweep {text!r}: the step must be above zero")
    if stop < start:
        raise UsageError(f"invalid {what} sweep {text!r}: the stop is below the start")
    count = _floor_int((stop - start) / step) + 1
    if count > MAX_SWEEP_POINTS:
        raise UsageError(f"invalid {what} sweep {text!r}: {count} points, at most {MAX_SWEEP_POINTS} allowed")
    return [start + k * step for k in range(count)]


def parse_budget_list(text: str) -> List[str]:
    """Budget specs from a single value, a comma list, or an inclusive `start:stop:step` sweep.

    `2MB:6MB:0.5MB` -> ['2MB', '2.5MB', ..., '6MB'] (points spelled in the start's unit; stop and
    step may use other units);  `2MB,3MiB` -> ['2MB', '3MiB'];  a leading `avg:` makes every value
    an average bit width: `avg:2:8:0.5` -> ['avg:2', 'avg:2.5', ...], `avg:4,4.5`.
    Each spec is checked here and resolves to bytes with `resolve_budget_spec`.
    """
    body = (text or "").strip()
    is_avg = body.lower().startswith(AVG_PREFIX)
    if is_avg:
        body = body[len(AVG_PREFIX):]
    if not body:
        raise UsageError(f"invalid budget {text!r}: expected {_LIST_FORMS}")
    if ":" in body and "," not in body:
        parts = [p.strip() for p in body.split(":")]
        if len(parts) != 3:
            raise UsageError(f"invalid budget sweep {text!r}: expected start:stop:step, e.g. 2MB:6MB:0.5MB or avg:2:8:0.5")
        if is_avg:
            points = sweep_points(*(_bits_number(p, text) for p in parts), text)
            specs = [f"{AVG_PREFIX}{_decimal_text(p)}" for p in points]
        else:
            (start, unit), *rest = [_number_and_unit(p) for p in parts]
            stop, step = (number * SIZE_UNITS[u] / SIZE_UNITS[unit] for number, u in rest)
            specs = [f"{_decimal_text(p)}{unit}" for p in sweep_points(start, stop, step, text)]
    else:
        items = [p.strip() for p in body.split(",")]
        specs = [f"{AVG_PREFIX}{_decimal_text(_bits_number(p, text))}" for p in items] if is_avg else items
    for spec in specs:
        _positive_bits(spec[len(AVG_PREFIX):], spec) if is_avg else parse_size(spec)
    return specs


def format_bytes(n: float, binary: bool = False) -> str:
    """Human-readable bytes: `4.00 MB` (SI, the default) or `3.81 MiB` with binary=True."""
    units = [("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)] if binary else [("GB", 10**9), ("MB", 10**6), ("kB", 10**3)]
    for name, size in units:
        if abs(n) >= size:
            return f"{n / size:.2f} {name}"
    return f"{n:.0f} B"
