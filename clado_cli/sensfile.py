"""Sensitivities as CSV files (docs/methods.md, "Sensitivities from a file"): what `clado
inspect --csv/--csv-pairs` writes and `clado optimize --sensitivities/--pairs` reads back, so
the optimizer runs on numbers measured elsewhere without a cache or a model.

Two long-format files, every value written with repr precision (reading gives the same float):
  - per option: `method,layer,numel,bits,value`, one row per method, decided layer and
    candidate width; numel is the layer's weight count (its size cost: numel · bits / 8 bytes);
    for clado the value is the option's single loss increase Ltilde[i,i], for mpqco and hawq
    the method's sensitivity s(l, b);
  - CLADO's pair terms: `layer_a,bits_a,layer_b,bits_b,value`, the measured Ltilde[(a,wa),(b,wb)]
    (loss increase with both options applied) for options of different layers; a pair given in
    one order stands for both, given in both orders the two must agree.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from .errors import InputError, UsageError
from .optimize import OptionSpace
from .plaindata import read_text_file

COLUMNS = ("method", "layer", "numel", "bits", "value")
PAIR_COLUMNS = ("layer_a", "bits_a", "layer_b", "bits_b", "value")
MAX_BYTES = 256 * 2 ** 20       # a file larger than this is refused before it is read
MAX_BITS = 16                   # widths the decision schema accepts
NUMEL_LIMIT = 2 ** 63
# agreement asked of a pair given in both orders: the tolerance the program's own symmetry check uses
SYM_RTOL, SYM_ATOL = 1e-9, 1e-12


def _num(v: float) -> str:
    return repr(float(v))


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def option_rows(method: str, space: OptionSpace, singles: np.ndarray) -> List[Tuple[Any, ...]]:
    """The per-option rows of one method: `singles` holds one value per option (layer-major)."""
    B = len(space.candidates)
    vals = np.asarray(singles, dtype=np.float64).reshape(space.n_layers, B)
    return [(method, name, space.numel[l], b, _num(vals[l, k]))
            for l, name in enumerate(space.layer_names) for k, b in enumerate(space.candidates)]


def pair_rows(space: OptionSpace, Ltilde: np.ndarray) -> List[Tuple[Any, ...]]:
    """Every ordered pair of options of different layers with its Ltilde entry (both orders, so
    a matrix that is not exactly symmetric comes back as it was)."""
    B = len(space.candidates)
    rows = []
    for i in range(space.n_options):
        la, ka = divmod(i, B)
        for j in range(space.n_options):
            lb, kb = divmod(j, B)
            if la != lb:
                rows.append((space.layer_names[la], space.candidates[ka], space.layer_names[lb],
                             space.candidates[kb], _num(Ltilde[i, j])))
    return rows


# -- reading ----------------------------------------------------------------------------------

@dataclass
class Table:
    """A checked CSV file: its rows (after the header) with their line numbers, and its sha256."""

    path: Path
    sha256: str
    rows: List[Tuple[int, List[str]]]


def read_table(path, columns: Sequence[str], what: str) -> Table:
    p = Path(path)
    if "\x00" in str(path) or not p.is_file():
        raise InputError(f"{what} not found: {str(path)!r}")
    text, data = read_text_file(p, f"{what} {p}", MAX_BYTES, InputError)
    if not text.strip():
        raise InputError(f"{what} {p} is empty")
    try:
        lines = [(n, r) for n, r in enumerate(csv.reader(io.StringIO(text)), start=1) if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise InputError(f"{what} {p} is not valid CSV: {exc}") from None
    header = [c.strip() for c in lines[0][1]]
    if header != list(columns):
        raise InputError(f"{what} {p} has the columns {','.join(header)}; expected {','.join(columns)}")
    body = lines[1:]
    if not body:
        raise InputError(f"{what} {p} holds a header but no rows")
    for n, r in body:
        if len(r) != len(columns):
            raise InputError(f"{what} {p} line {n}: {len(r)} fields, expected {len(columns)} ({','.join(columns)})")
    return Table(p, hashlib.sha256(data).hexdigest(), [(n, [c.strip() for c in r]) for n, r in body])


def _int(s: str, col: str, where: str, lo: int, hi: int) -> int:
    try:
        v = int(s)
    except ValueError:
        raise InputError(f"{where}: {col} {s!r} is not an integer") from None
    if col == "numel" and v < 0:
        raise InputError(f"{where}: numel {v} is negative")
    if not lo <= v <= hi:
        raise InputError(f"{where}: {col} {v} is outside {lo}..{hi}")
    return v


def _float(s: str, where: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise InputError(f"{where}: value {s!r} is not a number") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: value {s} is not finite")
    return v


@dataclass
class FileSensitivities:
    """One method's per-option values from a sensitivities file, on its option space."""

    method: str
    space: OptionSpace
    singles: np.ndarray
    table: Table


def read_option_values(path, method: str) -> FileSensitivities:
    """`method`'s rows of a sensitivities file, checked: every layer at the same widths, each
    (layer, width) once, one weight count per layer."""
    t = read_table(path, COLUMNS, "sensitivities file")
    numel: Dict[str, int] = {}
    seen: Dict[Tuple[str, str, int], int] = {}
    vals: Dict[str, Dict[int, float]] = {}
    methods: List[str] = []
    for n, (m, layer, ne, bits, value) in t.rows:
        where = f"sensitivities file {t.path} line {n}"
        if not m or not layer:
            raise InputError(f"{where}: empty {'method' if not m else 'layer'}")
        ne_i = _int(ne, "numel", where, 1, NUMEL_LIMIT - 1)
        b = _int(bits, "bits", where, 1, MAX_BITS)
        v = _float(value, where)
        key = (m, layer, b)
        if key in seen:
            raise InputError(f"{where}: duplicate row for method {m}, layer {layer}, {b} bits (first on line {seen[key]})")
        seen[key] = n
        if numel.setdefault(layer, ne_i) != ne_i:
            raise InputError(f"{where}: layer {layer} has numel {ne_i} here and {numel[layer]} on an earlier row")
        if m not in methods:
            check_method_name(m, where)
            methods.append(m)
        if m == method:
            vals.setdefault(layer, {})[b] = v
    if method not in methods:
        raise InputError(f"sensitivities file {t.path} holds no rows for method {method} (it holds: {', '.join(methods)})")
    layers = list(vals)
    widths = sorted(vals[layers[0]])
    for layer in layers[1:]:
        if sorted(vals[layer]) != widths:
            have, first = sorted(vals[layer]), layers[0]
            missing = sorted(set(widths) - set(have)) or sorted(set(have) - set(widths))
            raise InputError(f"sensitivities file {t.path}: method {method} gives layer {layer} the widths {have} but "
                             f"layer {first} the widths {widths} (every layer needs the same widths; differs at "
                             f"{missing[0]} bits)")
    space = OptionSpace(layer_names=layers, candidates=widths, numel=[numel[l] for l in layers])
    singles = np.array([vals[l][b] for l in layers for b in widths], dtype=np.float64)
    return FileSensitivities(method, space, singles, t)


def read_pairs(path, space: OptionSpace, singles: np.ndarray) -> Tuple[np.ndarray, Table]:
    """Ltilde on `space` from a pairs file, its diagonal `singles`: every pair of options of
    different layers given (in either order; in both, the two agree), nothing else."""
    t = read_table(path, PAIR_COLUMNS, "pairs file")
    B = len(space.candidates)
    layer_ix = {n: l for l, n in enumerate(space.layer_names)}
    width_ix = {b: k for k, b in enumerate(space.candidates)}
    P = space.n_options
    need = (P * P - space.n_layers * B * B) // 2
    if len(t.rows) < need:   # checked before the P x P matrix is allocated
        raise InputError(f"pairs file {t.path} gives {len(t.rows)} pairs; {space.n_layers} layers at {B} widths "
                         f"need {need} (every pair of options of different layers, in either order)")
    Lt = np.zeros((P, P))
    given = np.zeros((P, P), dtype=bool)
    line = {}
    for n, (la, ba, lb, bb, value) in t.rows:
        where = f"pairs file {t.path} line {n}"
        ix = []
        for layer, bits in ((la, ba), (lb, bb)):
            if layer not in layer_ix:
                raise InputError(f"{where}: layer {layer!r} is not one of the sensitivities file's layers")
            b = _int(bits, "bits", where, 1, MAX_BITS)
            if b not in width_ix:
                raise InputError(f"{where}: {b} bits is not one of the sensitivities file's widths {space.candidates}")
            ix.append(layer_ix[layer] * B + width_ix[b])
        if la == lb:
            raise InputError(f"{where}: both options are of layer {la} (pairs are of different layers; a single "
                             f"option's value is in the sensitivities file)")
        v = _float(value, where)
        i, j = ix
        if given[i, j]:
            raise InputError(f"{where}: duplicate pair {la}@{ba} - {lb}@{bb} (first on line {line[i, j]})")
        given[i, j], line[i, j] = True, n
        Lt[i, j] = v
    for i, j in zip(*np.nonzero(given & given.T)):
        if i < j and not np.isclose(Lt[i, j], Lt[j, i], rtol=SYM_RTOL, atol=SYM_ATOL):
            raise InputError(f"pairs file {t.path} is not symmetric: line {line[i, j]} gives {float(Lt[i, j])!r} and line "
                             f"{line[j, i]} gives {float(Lt[j, i])!r} for the same pair")
    only_one = given & ~given.T
    Lt[only_one.T] = Lt.T[only_one.T]
    layers = space.option_layers()
    absent = ~(given | given.T) & (layers[:, None] != layers[None, :])
    if absent.any():
        i, j = (int(x) for x in np.argwhere(absent)[0])
        (a, ka), (b, kb) = space.option(i), space.option(j)
        raise InputError(f"pairs file {t.path} misses {int(absent.sum()) // 2} pair(s) of options of different "
                         f"layers, the first {space.layer_names[a]}@{space.candidates[ka]} - "
                         f"{space.layer_names[b]}@{space.candidates[kb]}")
    np.fill_diagonal(Lt, singles)
    return Lt, t


def methods_in_file(path) -> List[str]:
    t = read_table(path, COLUMNS, "sensitivities file")
    out: List[str] = []
    for _, r in t.rows:
        if r[0] not in out:
            out.append(r[0])
    return out


def check_method_name(name: str, where) -> None:
    from .methods import prep_method_names

    if name not in prep_method_names():
        raise InputError(f"{where}: method {name!r} is not a method with its own sensitivities "
                         f"(one of {', '.join(prep_method_names())})")


def uses_pairs(method_name: str) -> bool:
    """Whether a method's numbers are a pair matrix (CLADO's Ltilde, which naive reads too)."""
    from .methods import get_method

    probe = OptionSpace(["layer"], [1], [1])
    return "Ltilde" in get_method(get_method(method_name).source).expected_arrays(probe)


def sensitivities_from_files(method_name: str, path, pairs_path=None):
    """(Sensitivities for `method_name`, provenance) from a sensitivities file and, for CLADO,
    its pairs file. The provenance is what a decision records: the files and their sha256."""
    from .methods import Sensitivities, get_method
    from .methods.mpqco import LinearSensitivities

    method = get_method(method_name)
    src = method.source
    fs = read_option_values(path, src)
    base = Sensitivities(method=method.name, space=fs.space, samples=0, batches=[], values={}, errors=None)
    prov: Dict[str, Any] = {"source": "file", "file": str(fs.table.path), "sha256": fs.table.sha256,
                            "pairs_file": None, "pairs_sha256": None}
    if uses_pairs(method.name):
        if pairs_path is None:
            if method.uses_psd:   # clado's program is the pair matrix itself
                raise UsageError(f"method {method.name} needs CLADO's pair terms: give pairs (the file clado inspect "
                                 f"--csv-pairs writes)", params=("pairs",))
            Lt = np.diag(fs.singles)   # naive reads only the single-option terms
        else:
            Lt, pt = read_pairs(pairs_path, fs.space, fs.singles)
            prov.update(pairs_file=str(pt.path), pairs_sha256=pt.sha256)
        base.values = {"Ltilde": Lt}
        return method.make_sensitivities(base), prov
    if pairs_path is not None:
        raise UsageError(f"method {method.name} reads one value per option: pairs applies to clado only",
                         params=("pairs",))
    s = fs.singles
    return LinearSensitivities(**{**vars(base), "singles": s}, s=s), prov
