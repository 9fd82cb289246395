"""VE.Direct framing and field mapping, on real captures and on hostile byte streams."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench_agent.hardware.vedirect.fields import BlockMerger, map_block
from bench_agent.hardware.vedirect.framing import (
    MAX_BLOCK_FIELDS,
    VEDirectFramer,
    checksum_byte,
    encode_block,
)
from tests.support import VEDIRECT_CAPTURES

CAPTURES = VEDIRECT_CAPTURES
SMARTSOLAR = CAPTURES / "smartsolar_1.39.dump"
BLUESOLAR = CAPTURES / "bluesolar_1.23.dump"
BMV = CAPTURES / "bvm702.dump"


def reference_blocks(stream: bytes) -> list[bytes]:
    """An independent, naive framer: blocks between checksum bytes, HEX frames cut out."""
    without_hex = re.sub(rb"(?<!Checksum\t):[0-9A-Fa-f]*\n", b"", stream)
    ends = [m.end() + 1 for m in re.finditer(rb"\r\nChecksum\t", without_hex)]
    blocks = []
    start = without_hex.find(b"\r\n")
    for end in ends:
        candidate = without_hex[start:end]
        if candidate.startswith(b"\r\n") and sum(candidate) % 256 == 0:
            blocks.append(candidate)
        start = end
    return blocks


def framed(stream: bytes) -> tuple[VEDirectFramer, list[bytes]]:
    framer = VEDirectFramer()
    return framer, [block.raw for block in framer.feed_raw(stream)]


# --------------------------------------------------------------------------- captures


@pytest.mark.parametrize(
    ("path", "expected_blocks", "expected_hex_frames"),
    [(SMARTSOLAR, 493, 2), (BLUESOLAR, 248, 7), (BMV, 906, 0)],
)
def test_every_valid_block_of_a_capture_is_parsed(
    path: Path, expected_blocks: int, expected_hex_frames: int
) -> None:
    stream = path.read_bytes()
    framer, raws = framed(stream)
    assert raws == reference_blocks(stream)
    assert len(raws) == expected_blocks == framer.blocks_ok
    assert framer.checksum_errors == 0
    assert framer.hex_frames == expected_hex_frames
    assert all(sum(raw) % 256 == 0 for raw in raws)


def test_byte_at_a_time_gives_the_same_blocks_as_one_feed() -> None:
    stream = SMARTSOLAR.read_bytes()
    whole = VEDirectFramer().feed(stream)
    framer = VEDirectFramer()
    trickled = [block for i in range(len(stream)) for block in framer.feed(stream[i : i + 1])]
    assert trickled == whole


def test_partial_block_at_attach_is_discarded_without_an_error() -> None:
    stream = SMARTSOLAR.read_bytes()  # starts with "ID\t0xA05F\r\nFW..." (PID cut)
    framer = VEDirectFramer()
    first = framer.feed(stream[:400])[0]
    assert first["PID"] == "0xA05F"
    assert framer.checksum_errors == 0
    first_block_end = stream.index(b"Checksum\t") + len(b"Checksum\t") + 1
    assert framer.bytes_discarded == first_block_end


def test_smartsolar_block_maps_to_units() -> None:
    reading = map_block(VEDirectFramer().feed(SMARTSOLAR.read_bytes())[0])
    assert reading.product_id == 0xA05F
    assert reading.model == "SmartSolar MPPT 100/20"
    assert reading.firmware == "1.39"
    assert reading.serial_number == "HQ18486U2B4"
    assert reading.battery_volts == pytest.approx(12.81)
    assert reading.battery_amps == pytest.approx(-0.010)
    assert reading.panel_volts == pytest.approx(0.010)
    assert reading.panel_watts == 0
    assert reading.charge_state == "off"
    assert reading.mppt_mode == "off"
    assert reading.error == "no_error"
    assert reading.load_on is True
    assert reading.load_amps == 0.0
    assert reading.day_sequence == 0
    assert reading.extra == {}
    assert reading.invalid_labels == ()


def test_bluesolar_block_maps_yields_and_state() -> None:
    reading = map_block(VEDirectFramer().feed(BLUESOLAR.read_bytes())[0])
    assert reading.model == "BlueSolar MPPT 75/15"
    assert reading.firmware == "1.23"
    assert reading.battery_volts == pytest.approx(12.53)
    assert reading.battery_amps == pytest.approx(0.62)
    assert reading.panel_volts == pytest.approx(33.58)
    assert reading.panel_watts == 8
    assert reading.charge_state == "bulk"
    assert reading.mppt_mode is None  # firmware 1.23 does not send MPPT
    assert reading.yield_total_kwh == pytest.approx(82.72)
    assert reading.yield_today_kwh == 0.0
    assert reading.max_power_today_w == 11
    assert reading.yield_yesterday_kwh == pytest.approx(0.25)
    assert reading.max_power_yesterday_w == 119
    assert reading.day_sequence == 274


def test_bmv_blocks_map_live_and_history_values() -> None:
    blocks = VEDirectFramer().feed(BMV.read_bytes())
    live, history = blocks[0], blocks[1]
    reading = map_block(live)
    assert reading.product_id == 0x203
    assert reading.firmware == "3.08"
    assert reading.battery_volts == pytest.approx(12.065)
    assert reading.battery_amps == pytest.approx(-7.625)
    assert reading.battery_watts == -92
    assert reading.consumed_ah == pytest.approx(-65.473)
    assert reading.state_of_charge_pct == pytest.approx(83.9)
    assert reading.time_to_go_min == 942.0
    assert reading.alarm is False
    assert reading.relay is False
    assert reading.alarm_reasons == ()
    assert reading.extra == {"BMV": "700"}
    old = map_block(history)
    assert old.deepest_discharge_ah == pytest.approx(-149.322)
    assert old.cumulative_ah_drawn == pytest.approx(-5526.294)
    assert old.min_battery_volts == pytest.approx(11.733)
    assert old.max_battery_volts == pytest.approx(16.161)
    assert old.seconds_since_full_charge == 368003
    assert old.automatic_syncs == 26
    assert old.discharged_energy_kwh == pytest.approx(68.43)
    assert old.charged_energy_kwh == pytest.approx(85.27)
    assert old.battery_volts is None


def test_block_merger_keeps_the_newest_of_both_bmv_blocks() -> None:
    blocks = VEDirectFramer().feed(BMV.read_bytes())
    merger = BlockMerger()
    merged = [map_block(merger.add(block)) for block in blocks]
    # From the second block on, every reading has both live and history values...
    assert all(r.state_of_charge_pct is not None for r in merged[1:])
    assert all(r.deepest_discharge_ah is not None for r in merged[1:])
    # ...and the newest of each: the last reading carries the last live block's SOC.
    last_live = next(b for b in reversed(blocks) if "SOC" in b)
    last_history = next(b for b in reversed(blocks) if "H1" in b)
    assert merged[-1].state_of_charge_pct == int(last_live["SOC"]) / 10
    assert merged[-1].deepest_discharge_ah == int(last_history["H1"]) / 1000


def test_block_merger_forgets_old_layouts() -> None:
    merger = BlockMerger(max_kinds=2)
    merger.add({"A": "1"})
    merger.add({"B": "2"})
    assert merger.add({"C": "3"}) == {"B": "2", "C": "3"}
    merger.clear()
    assert merger.add({"A": "9"}) == {"A": "9"}
    with pytest.raises(ValueError, match="max_kinds"):
        BlockMerger(max_kinds=0)


# --------------------------------------------------------------------------- mapping


def test_bad_values_leave_fields_none_and_are_listed() -> None:
    reading = map_block(
        {"V": "12x", "I": "", "CS": "-3", "LOAD": "maybe", "PID": "0xZZ", "SOC": "500", "FOO": "1"}
    )
    assert reading.battery_volts is None
    assert reading.battery_amps is None
    assert reading.charge_state is None
    assert reading.load_on is None
    assert reading.product_id is None
    assert reading.model is None
    assert reading.state_of_charge_pct == 50.0
    assert reading.invalid_labels == ("CS", "I", "LOAD", "PID", "V")
    assert reading.extra == {"FOO": "1"}


def test_codes_map_to_names_and_unknown_codes_stay_visible() -> None:
    reading = map_block(
        {"CS": "245", "MPPT": "2", "ERR": "17", "OR": "0x00000011", "AR": "4100", "TTG": "-1"}
    )
    assert reading.charge_state == "starting_up"
    assert reading.mppt_mode == "mppt_active"
    assert reading.error == "charger_temperature_too_high"
    assert reading.off_reasons == ("no_input_power", "protection_active")
    assert reading.alarm_reasons == ("low_soc", "short_circuit")
    assert reading.time_to_go_min == math.inf
    odd = map_block({"CS": "200", "ERR": "99", "PID": "0xBEEF", "OR": "0x80000000"})
    assert odd.charge_state == "unknown_200"
    assert odd.error == "unknown_99"
    assert odd.model == "unknown 0xBEEF"
    assert odd.off_reasons == ("unknown_0x80000000",)


@given(st.dictionaries(st.text(max_size=10), st.text(max_size=40), max_size=30))
def test_map_block_never_raises(fields: dict[str, str]) -> None:
    reading = map_block(fields)
    assert set(reading.invalid_labels) <= set(fields)
    assert set(reading.extra) <= set(fields)


# --------------------------------------------------------------------------- hostile streams

BLOCK_A = encode_block([("PID", "0xA05F"), ("V", "12810"), ("I", "-10"), ("CS", "3")])
BLOCK_B = encode_block([("PID", "0xA05F"), ("V", "12800"), ("I", "250"), ("CS", "5")])


def block_with_checksum(target: int) -> bytes:
    """A real-looking block whose checksum byte is ``target`` (e.g. ':' or '\\r')."""
    # Three printable characters span more than 256 consecutive sums: every byte is reachable.
    printable = [chr(c) for c in range(0x21, 0x7F)]
    for a, b, c in itertools.product(printable, repeat=3):
        block = encode_block([("PID", "0xA05F"), ("SER#", f"HQ{a}{b}{c}"), ("V", "12810")])
        if block[-1] == target:
            return block
    raise AssertionError("unreachable")


@pytest.mark.parametrize("target", [ord(":"), 0x0D, 0x0A, 0x09, 0x00, 0xFF])
def test_any_byte_can_be_the_checksum(target: int) -> None:
    block = block_with_checksum(target)
    framer, raws = framed(BLOCK_A + block + BLOCK_B)
    assert raws == [BLOCK_A, block, BLOCK_B]
    assert framer.checksum_errors == 0


def test_hex_frames_anywhere_but_the_checksum_byte_are_skipped() -> None:
    hex_frame = b":A0102000543\n"
    cut = BLOCK_A.index(b"2810")  # in the middle of a value
    stream = BLOCK_A[:cut] + hex_frame + BLOCK_A[cut:] + hex_frame + BLOCK_B
    framer, raws = framed(stream)
    assert raws == [BLOCK_A, BLOCK_B]
    assert framer.hex_frames == 2
    assert framer.bytes_discarded == 0


def test_a_colon_that_is_not_a_hex_frame_is_garbage_and_the_next_block_survives() -> None:
    framer, raws = framed(BLOCK_A + b":not hex at all" + BLOCK_B)
    assert raws == [BLOCK_A, BLOCK_B]
    assert framer.bytes_discarded == len(b":not hex at all")


def test_corrupted_checksum_is_counted_and_never_accepted() -> None:
    bad = BLOCK_B[:-1] + bytes([(BLOCK_B[-1] + 1) & 0xFF])
    framer, raws = framed(BLOCK_A + bad + BLOCK_A)
    assert raws == [BLOCK_A, BLOCK_A]
    assert framer.checksum_errors == 1
    assert framer.bytes_discarded == len(bad)


def test_garbage_with_field_like_lines_before_a_block_is_cut_off() -> None:
    garbage = b"\x00\xff\r\nAB\tCD\r\nX\t1"
    framer, raws = framed(BLOCK_A + garbage + BLOCK_B)
    assert raws == [BLOCK_A, BLOCK_B]
    assert framer.bytes_discarded == len(garbage)


def test_oversized_block_and_field_are_dropped() -> None:
    too_many = encode_block([(f"L{i}", "1") for i in range(MAX_BLOCK_FIELDS + 1)])
    too_long = encode_block([("PID", "0xA05F"), ("V", "1" * 2000)])
    framer, raws = framed(too_many + BLOCK_A + too_long + BLOCK_B)
    assert raws == [BLOCK_A, BLOCK_B]
    assert framer.bytes_discarded == len(too_many) + len(too_long)


def test_memory_stays_bounded_on_an_endless_line() -> None:
    framer = VEDirectFramer()
    framer.feed(b"\r\nPID\t" + b"7" * 100_000)
    framer.feed(b"\r\n" + b"\r\nK\tv" * 10_000)
    assert framer.feed(BLOCK_A) == [{"PID": "0xA05F", "V": "12810", "I": "-10", "CS": "3"}]


def test_checksum_byte_helper() -> None:
    body = b"\r\nV\t12810\r\nChecksum\t"
    assert (sum(body) + checksum_byte(body)) % 256 == 0


CAPTURE_STREAM = SMARTSOLAR.read_bytes() if SMARTSOLAR.exists() else b""
CAPTURE_RAWS = set(reference_blocks(CAPTURE_STREAM))
FRAGMENTS = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b"\t", b":", b"A5", b"PID", b"H1", b"Checksum\t", b"0", b"V\t1"]
)
GARBAGE = st.lists(st.one_of(st.binary(max_size=8), FRAGMENTS), max_size=40).map(b"".join)
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(st.binary(max_size=4000))
def test_random_bytes_never_raise_nor_yield_a_bad_block(data: bytes) -> None:
    for block in VEDirectFramer().feed_raw(data):
        assert sum(block.raw) % 256 == 0
        assert block.raw.startswith(b"\r\n")


@HYPOTHESIS
@given(GARBAGE)
def test_structured_garbage_never_yields_a_bad_block(data: bytes) -> None:
    for block in VEDirectFramer().feed_raw(data):
        assert sum(block.raw) % 256 == 0


@HYPOTHESIS
@given(st.integers(0, len(CAPTURE_STREAM)), st.integers(0, 3000))
def test_truncations_yield_only_real_blocks(start: int, length: int) -> None:
    _, raws = framed(CAPTURE_STREAM[start : start + length])
    assert set(raws) <= CAPTURE_RAWS


@HYPOTHESIS
@given(st.data())
def test_bit_flips_never_yield_a_bad_block_and_spare_the_other_blocks(data: st.DataObject) -> None:
    chunk = bytearray(CAPTURE_STREAM[:4000])
    flips = data.draw(st.lists(st.integers(0, len(chunk) * 8 - 1), min_size=1, max_size=5))
    for bit in flips:
        chunk[bit // 8] ^= 1 << (bit % 8)
    _, clean = framed(CAPTURE_STREAM[:4000])
    _, raws = framed(bytes(chunk))
    assert all(sum(raw) % 256 == 0 for raw in raws)
    # Each flip can spoil at most the block it hits and the one after it.
    assert len(raws) >= len(clean) - 2 * len(flips)


@HYPOTHESIS
@given(st.data())
def test_inserted_hex_frames_change_nothing(data: st.DataObject) -> None:
    chunk = CAPTURE_STREAM[:3000]
    checksum_slots = {m.end() for m in re.finditer(rb"Checksum\t", chunk)}
    positions = data.draw(st.lists(st.integers(0, len(chunk)), max_size=6))
    positions = sorted(p for p in positions if p not in checksum_slots)
    frame = b":" + data.draw(st.text("0123456789ABCDEF", max_size=40)).encode() + b"\n"
    pieces, last = [], 0
    for p in positions:
        pieces += [chunk[last:p], frame]
        last = p
    pieces.append(chunk[last:])
    framer, raws = framed(b"".join(pieces))
    assert raws == framed(chunk)[1]
    assert framer.hex_frames >= len(positions)


@HYPOTHESIS
@given(GARBAGE | st.binary(max_size=300))
def test_a_valid_block_after_any_garbage_is_recovered(garbage: bytes) -> None:
    # If garbage ends in "Checksum\t", the block's first '\r' is, by protocol, a checksum
    # byte: that block is unrecoverable by any reader; the one after it is not.
    framer = VEDirectFramer()
    blocks = framer.feed_raw(garbage + BLOCK_A + BLOCK_B)
    assert blocks and blocks[-1].raw == BLOCK_B
    if not garbage.endswith(b"Checksum\t"):
        # The first block's data reaches the consumer (with a 1/256 chance, garbage
        # lines that happen to complete its checksum come along with it).
        expected = {"PID": "0xA05F", "V": "12810", "I": "-10", "CS": "3"}
        assert any(expected.items() <= b.fields.items() for b in blocks[:-1])


@pytest.mark.parametrize(
    ("label", "text", "field"),
    [
        ("SER#", "HQ\x1b[2J1234", "serial_number"),  # a terminal escape code
        ("SER#", "HQ\x001234", "serial_number"),  # NUL
        ("SER#", "<script>x</script>", "serial_number"),  # markup for a dashboard
        ("SER#", "H" * 33, "serial_number"),  # longer than any serial number
        ("FW", "1.39\x07", "firmware"),
        ("PPV", "9" * 120, "panel_watts"),  # 120 digits
        ("PPV", "-5", "panel_watts"),  # a panel does not take power
        ("V", "250000", "battery_volts"),  # 250 V on a 12-48 V bench
        ("SOC", "1500", "state_of_charge_pct"),  # 150 %
        ("I", "-99999999", "battery_amps"),
        ("CS", "99999999999", "charge_state"),
        ("PID", "0x" + "F" * 40, "product_id"),
    ],
)
def test_hostile_charger_values_become_null_and_are_counted(
    label: str, text: str, field: str
) -> None:
    good = {"V": "13210", "SER#": "HQ1234ABCDE", "PPV": "37"}
    reading = map_block({**good, label: text})
    assert getattr(reading, field) is None
    assert label in reading.invalid_labels
    # The other fields are untouched.
    for other, value in good.items():
        if other != label:
            assert other not in reading.invalid_labels, value


def test_unmapped_labels_are_kept_only_when_printable() -> None:
    reading = map_block({"BMV": "712 Smart", "X\x1b": "1", "Y": "a\x00b"})
    assert dict(reading.extra) == {"BMV": "712 Smart"}
