from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clado_cli.errors import UsageError
from clado_cli.optimize.budget import (
    MAX_SWEEP_POINTS,
    Budget,
    format_bytes,
    parse_budget_list,
    parse_size,
    resolve_budget,
    resolve_budget_spec,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4MB", 4_000_000),
        ("4MiB", 4 * 2**20),
        ("800KB", 800_000),
        ("800kB", 800_000),
        ("800kb", 800_000),
        ("1.5GB", 1_500_000_000),
        ("1.5GiB", 3 * 2**29),
        ("2KiB", 2048),
        ("2kib", 2048),
        ("512B", 512),
        ("512b", 512),
        ("123456", 123456),
        ("4.1MB", 4_100_000),  # decimal, not float: 4.1 * 1e6 would floor to 4099999
        ("4 MB", 4_000_000),
        (" 0.5KB ", 500),
        ("1.9B", 1),  # rounded down
        ("1e6", 1_000_000),
    ],
)
def test_parse_size_table(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["0", "0MB", "-4MB", "nan", "inf", "4XB", "", "MB", "0.5B", "4TB", "4 M B", "1e9999999MB", "4MB4"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError) as err:
        parse_size(text)
    message = str(err.value)
    assert repr(text) in message
    assert "\n" not in message


def test_parse_size_rejects_blank():
    with pytest.raises(UsageError, match="invalid size"):
        parse_size("   ")


def test_parse_size_message_says_what_is_accepted():
    with pytest.raises(UsageError, match="KiB, MiB, GiB"):
        parse_size("4XB")


@given(st.integers(min_value=1, max_value=10**15))
def test_bytes_round_trip(n):
    assert parse_size(f"{n}B") == n
    assert parse_size(str(n)) == n


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["K", "M", "G"]))
def test_binary_units_are_powers_of_two(n, prefix):
    si, binary = parse_size(f"{n}{prefix}B"), parse_size(f"{n}{prefix}iB")
    power = "KMG".index(prefix) + 1
    assert Decimal(binary) / Decimal(si) == Decimal(1024**power) / Decimal(1000**power)


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["kb", "KB", "Kb", "mib", "MIB", "gB"]))
def test_units_are_case_insensitive(n, unit):
    assert parse_size(f"{n}{unit}") == parse_size(f"{n}{unit.upper().replace('IB', 'iB')}")


def test_resolve_budget_size_and_avg_bits():
    assert resolve_budget("4MB", None, 10) == Budget(given="4MB", bytes=4_000_000)
    # floor(4.5 * 1001 / 8) = floor(563.06) = 563
    assert resolve_budget(None, 4.5, 1001) == Budget(given="avg:4.5", bytes=563)
    assert resolve_budget(None, 8, 1000).bytes == 1000
    assert resolve_budget_spec("avg:4.5", 1001) == Budget(given="avg:4.5", bytes=563)
    assert resolve_budget_spec("4MiB", 1) == Budget(given="4MiB", bytes=4 * 2**20)


@pytest.mark.parametrize(
    "size, avg_bits, numel, match",
    [
        (None, None, 10, "exactly one"),
        ("4MB", 4.0, 10, "exactly one"),
        (None, 0.0, 10, "above zero"),
        (None, -2.0, 10, "above zero"),
        (None, float("nan"), 10, "average bit width"),
        (None, float("inf"), 10, "average bit width"),
        (None, 4.0, 0, "decided weights"),
        (None, 1e-3, 100, "under 1 byte"),
        ("four", None, 10, "invalid size"),
    ],
)
def test_resolve_budget_rejects(size, avg_bits, numel, match):
    with pytest.raises(UsageError, match=match):
        resolve_budget(size, avg_bits, numel)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4MB", ["4MB"]),
        ("2MB,3MiB", ["2MB", "3MiB"]),
        (" 2MB , 3MB ", ["2MB", "3MB"]),
        ("2MB:4MB:0.5MB", ["2MB", "2.5MB", "3MB", "3.5MB", "4MB"]),
        ("2MB:4.2MB:0.5MB", ["2MB", "2.5MB", "3MB", "3.5MB", "4MB"]),
        ("1MB:1.3MB:0.1MB", ["1MB", "1.1MB", "1.2MB", "1.3MB"]),  # stop reached exactly, no float drift
        ("1MB:1MB:1KB", ["1MB"]),
        ("1MB:2MB:500KB", ["1MB", "1.5MB", "2MB"]),  # stop and step in their own units
        ("1000:3000:1000", ["1000B", "2000B", "3000B"]),
        ("avg:4.5", ["avg:4.5"]),
        ("avg:4,4.50", ["avg:4", "avg:4.5"]),
        ("avg:2:4:0.5", ["avg:2", "avg:2.5", "avg:3", "avg:3.5", "avg:4"]),
        ("AVG:3", ["avg:3"]),
    ],
)
def test_parse_budget_list(text, expected):
    assert parse_budget_list(text) == expected


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "invalid budget"),
        ("avg:", "invalid budget"),
        ("2MB:6MB:0MB", "step must be above zero"),
        ("2MB:6MB:-1MB", "step must be above zero"),
        ("avg:2:8:0", "step must be above zero"),
        ("6MB:2MB:1MB", "stop is below the start"),
        ("avg:8:2:1", "stop is below the start"),
        ("1B:2000B:1B", f"at most {MAX_SWEEP_POINTS}"),
        ("1MB:2MB", "start:stop:step"),
        ("1MB:2MB:1KB:3", "start:stop:step"),
        ("2MB,,3MB", "invalid size"),
        ("2MB,avg:4", "invalid size"),
        ("avg:4,x", "average bit width"),
        ("avg:-1", "above zero"),
        ("0MB:1MB:1KB", "start must be above zero"),
    ],
)
def test_parse_budget_list_rejects(text, match):
    with pytest.raises(UsageError, match=match) as err:
        parse_budget_list(text)
    assert "\n" not in str(err.value)


def test_sweep_of_exactly_the_maximum_points_is_allowed():
    assert len(parse_budget_list(f"1B:{MAX_SWEEP_POINTS}B:1B")) == MAX_SWEEP_POINTS


@settings(max_examples=60)
@given(
    st.integers(min_value=1, max_value=5000),
    st.integers(min_value=0, max_value=5000),
    st.integers(min_value=1, max_value=1000),
    st.sampled_from(["KB", "MB", "KiB", "B"]),
)
def test_size_sweeps_are_monotone_and_within_range(start, span, step, unit):
    text = f"{start}{unit}:{start + span}{unit}:{step}{unit}"
    if span // step + 1 > MAX_SWEEP_POINTS:
        with pytest.raises(UsageError):
            parse_budget_list(text)
        return
    sizes = [parse_size(spec) for spec in parse_budget_list(text)]
    assert sizes[0] == parse_size(f"{start}{unit}")
    assert all(a < b for a, b in zip(sizes, sizes[1:]))
    assert sizes[-1] <= parse_size(f"{start + span}{unit}")
    assert len(sizes) == span // step + 1


@settings(max_examples=60)
@given(st.integers(min_value=1, max_value=160), st.integers(min_value=0, max_value=60), st.integers(min_value=1, max_value=20))
def test_avg_sweeps_are_monotone(start_tenths, span_tenths, step_tenths):
    text = f"avg:{start_tenths / 10}:{(start_tenths + span_tenths) / 10}:{step_tenths / 10}"
    budgets = [resolve_budget_spec(spec, decided_numel=10_000).bytes for spec in parse_budget_list(text)]
    assert all(a < b for a, b in zip(budgets, budgets[1:]))
    assert len(budgets) == span_tenths // step_tenths + 1


@pytest.mark.parametrize(
    "n, binary, expected",
    [(4_000_000, False, "4.00 MB"), (512, False, "512 B"), (1234, False, "1.23 kB"), (1.5e9, False, "1.50 GB"), (4 * 2**20, True, "4.00 MiB"), (2048, True, "2.00 KiB")],
)
def test_format_bytes(n, binary, expected):
    assert format_bytes(n, binary=binary) == expected
