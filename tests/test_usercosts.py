"""User cost tables (--cost NAME=FILE): reading, indexing and every refusal as one line."""
import numpy as np
import pytest

from clado_cli.errors import InputError, UsageError
from clado_cli.usercosts import MAX_BYTES, parse_cost_option, parse_cost_options, read_cost_table

NAMES = ["l1", "l2", "l3"]
CANDS = [2, 4, 8]


def table(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def full(a_bits=None, skip=(), extra=""):
    head = "layer,w_bits,value" + (",a_bits" if a_bits else "")
    rows = [f"{l},{b},{i * 10 + b / 2}" + (f",{a_bits}" if a_bits else "")
            for i, l in enumerate(NAMES) for b in CANDS if (l, b) not in skip]
    return "\n".join([head, *rows]) + "\n" + extra


def test_reads_a_table_in_the_callers_orders(tmp_path):
    t = read_cost_table(table(tmp_path, full()), "latency", NAMES, CANDS)
    assert t.values.shape == (3, 3) and t.values.dtype == np.float64
    assert t.values[1].tolist() == [11.0, 12.0, 14.0] and np.asarray(t)[2, 0] == 21.0
    assert t.rows[("l1", 8, None)] == 4.0 and not t.has_a_bits and t.a_bits is None
    # columns in any order, spaces around fields, a BOM, CRLF line ends and blank lines
    text = "\ufeff value , layer ,w_bits\r\n" + "\r\n".join(f"{i + b},{l}, {b}" for i, l in enumerate(NAMES)
                                                       for b in (8, 4, 2)) + "\r\n\r\n"
    t = read_cost_table(table(tmp_path, text), "energy", ["l3", "l1", "l2"], [8, 2, 4])
    assert t.values.tolist() == [[10, 4, 6], [8, 2, 4], [9, 3, 5]]


def test_extra_widths_and_fixed_layers_are_kept_out_of_the_program(tmp_path):
    t = read_cost_table(table(tmp_path, full(extra="l1,3,7\nconv1,8,5\n")), "latency", NAMES, CANDS,
                        fixed_names=["conv1"])
    assert t.values.shape == (3, 3) and t.rows[("l1", 3, None)] == 7 and t.rows[("conv1", 8, None)] == 5


def test_a_bits_column_is_kept_and_selects_rows(tmp_path):
    text = full(a_bits=8) + "\n".join(f"{l},{b},{100 + b},4" for l in NAMES for b in CANDS) + "\n"
    p = table(tmp_path, text)
    t8 = read_cost_table(p, "latency", NAMES, CANDS, a_bits=8)
    t4 = read_cost_table(p, "latency", NAMES, CANDS, a_bits=4)
    assert t8.has_a_bits and t8.a_bits == 8 and t8.values[0].tolist() == [1, 2, 4]
    assert t4.values[0].tolist() == [102, 104, 108]
    assert t8.rows[("l2", 4, 4)] == 104 and t8.rows[("l2", 4, 8)] == 12
    # candidates that are (weight, activation) pairs: one activation width per candidate
    tp = read_cost_table(p, "latency", NAMES, [2, 4, 4, 8], a_bits=[8, 4, 8, 4])
    assert tp.values[0].tolist() == [1, 104, 2, 108] and tp.a_bits is None
    # a table without a_bits holds for every activation width
    assert read_cost_table(table(tmp_path, full(), "noa.csv"), "latency", NAMES, [2, 4, 4], a_bits=[8, 4, 8]
                           ).values[0].tolist() == [1, 2, 2]
    with pytest.raises(InputError, match="missing: l1@2a6, l1@4a6, l1@8a6 and 6 more"):
        read_cost_table(p, "latency", NAMES, CANDS, a_bits=6)
    with pytest.raises(InputError, match="l1 at w_bits 2 has rows for several a_bits"):
        read_cost_table(p, "latency", NAMES, CANDS)
    # one a_bits per (layer, w_bits): no activation width needed
    assert read_cost_table(table(tmp_path, full(a_bits=8), "one.csv"), "latency", NAMES, CANDS).values[0, 0] == 1


@pytest.mark.parametrize("text,needle", [
    ("", "empty; the first line must be the header"),
    ("l1,2,0.5\n", "the header lacks columns layer, w_bits, value"),
    ("layer,w_bits\nl1,2\n", "the header lacks column value"),
    ("layer,w_bits,value,ms\n", "unknown column 'ms'"),
    ("layer,w_bits,value,layer\n", "column 'layer' appears twice"),
    (full(extra="l1,2,9\n"), r"l1 at w_bits 2 appears twice \(lines 2 and 11\)"),
    (full(extra="zz,2,1\nyy,4,1\nconv1,2,1\nxx,2,1\n"), "4 unknown layers conv1, xx, yy and 1 more"),
    (full(skip=[("l2", 4)]), r"1 \(layer, w_bits\) entry missing: l2@4"),
    (full(extra="l1,16,abc\n"), "line 11: value 'abc' is not a number"),
    (full(extra="l1,16,nan\n"), "line 11: value 'nan' is not finite"),
    (full(extra="l1,16,inf\n"), "value 'inf' is not finite"),
    (full(extra="l1,16,-1\n"), "line 11: value -1 is negative"),
    (full(extra="l1,4.5,1\n"), "w_bits '4.5' is not an integer"),
    (full(extra="l1,64,1\n"), "w_bits 64 is outside 1..32"),
    (full(extra="l1,2\n"), "line 11: 2 fields, the header has 3"),
    (full(extra=",2,1\n"), "line 11: empty layer name"),
    ("layer,w_bits,value\nl1,2,\"1\n", "not readable as CSV"),
])
def test_bad_tables_are_one_line_errors_naming_the_file(tmp_path, text, needle):
    p = table(tmp_path, text)
    with pytest.raises(InputError, match=needle) as e:
        read_cost_table(p, "latency", NAMES, CANDS)
    assert "\n" not in str(e.value) and f"cost table latency ({p})" in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(InputError, match=r"cost table latency \(.*nope.csv\): file not found"):
        read_cost_table(tmp_path / "nope.csv", "latency", NAMES, CANDS)
    p = tmp_path / "bin.csv"
    p.write_bytes(b"layer,w_bits,value\n\xff\xfe\n")
    with pytest.raises(InputError, match="not a UTF-8 text file"):
        read_cost_table(p, "latency", NAMES, CANDS)
    p.write_bytes(b"layer,w_bits,value\nl1\x00,2,1\n")
    with pytest.raises(InputError, match="NUL character"):
        read_cost_table(p, "latency", NAMES, CANDS)
    big = tmp_path / "big.csv"
    with big.open("wb") as f:
        f.truncate(MAX_BYTES + 1)
    with pytest.raises(InputError, match="larger than 64 MiB"):
        read_cost_table(big, "latency", NAMES, CANDS)


def test_cost_options():
    assert parse_cost_option("latency=path/lat.csv") == ("latency", "path/lat.csv")
    assert parse_cost_option("energy_2 = a=b.csv") == ("energy_2", "a=b.csv")
    assert parse_cost_options(["a=x.csv", "b=y.csv"]) == [("a", "x.csv"), ("b", "y.csv")]
    for bad, needle in [("latency", "give NAME=FILE"), ("=x.csv", "give NAME=FILE"), ("lat=", "give NAME=FILE"),
                        ("Latency=x.csv", "lower-case letters"), ("2x=x.csv", "lower-case letters"),
                        ("size=x.csv", "'size' is a built-in cost"), ("bops=x.csv", "built-in")]:
        with pytest.raises(UsageError, match=needle):
            parse_cost_option(bad)
    with pytest.raises(UsageError, match="cost 'a' given more than once"):
        parse_cost_options(["a=x.csv", "a=y.csv"])
    with pytest.raises(UsageError, match="built-in"):
        read_cost_table("x.csv", "size", NAMES, CANDS)
