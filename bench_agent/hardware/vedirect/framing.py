"""VE.Direct framing: bytes in, checksummed blocks of fields out (pure; see the package)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

DEFAULT_BAUDRATE: Final = 19200

# Bounds on anything the framer holds: the longest real block is ~25 fields and
# ~300 bytes; labels are at most 9 characters and values at most 33.
MAX_BLOCK_BYTES: Final = 1024
MAX_BLOCK_FIELDS: Final = 64
MAX_LABEL_BYTES: Final = 16
MAX_VALUE_BYTES: Final = 128
MAX_HEX_FRAME_BYTES: Final = 512

_CR: Final = 0x0D
_LF: Final = 0x0A
_TAB: Final = 0x09
_COLON: Final = 0x3A
_CHECKSUM_LABEL: Final = b"Checksum"
_HEX_DIGITS: Final = frozenset(b"0123456789ABCDEFabcdef")
# Labels a block opens with on every Victron device we know: MPPTs, BMVs,
# SmartShunts and Phoenix inverters start with PID; the BMV history block with H1.
_BLOCK_OPENING_LABELS: Final = frozenset({b"PID", b"H1"})

# Framer states.
_UNSYNCED: Final = 0  # hunting for the '\r' that may start a block
_FIELD_LF: Final = 1  # got the '\r' that starts a field; expect '\n'
_LABEL: Final = 2
_VALUE: Final = 3
_CHECKSUM_BYTE: Final = 4  # the next byte, whatever it is, is the checksum
_BLOCK_CR: Final = 5  # a block just ended; the next '\r' starts the next one


def checksum_byte(block_without_checksum: bytes) -> int:
    """The checksum byte that makes ``block_without_checksum`` + byte sum to 0 mod 256."""
    return (-sum(block_without_checksum)) & 0xFF


def encode_block(fields: Iterable[tuple[str, str]]) -> bytes:
    """Encode fields as one text-protocol block, ``Checksum`` field included, as a device does."""
    body = b"".join(
        b"\r\n" + label.encode("ascii") + b"\t" + value.encode("ascii") for label, value in fields
    )
    body += b"\r\n" + _CHECKSUM_LABEL + b"\t"
    return body + bytes([checksum_byte(body)])


@dataclass(frozen=True, slots=True)
class RawBlock:
    """A block whose checksum is valid: its fields (label -> value) and its exact bytes."""

    fields: dict[str, str]
    raw: bytes  # from the '\r\n' that starts it through the checksum byte


class VEDirectFramer:
    """Turns a VE.Direct byte stream into validated blocks. Pure: no I/O, no clock.

    Counters (cumulative): ``blocks_ok``; ``checksum_errors`` (a block whose start was
    known, or that opened like a block, failed its checksum); ``bytes_discarded`` (every
    byte that ended up in no accepted block and no HEX frame: the partial block at
    attach, garbage, rejected blocks); ``hex_frames`` (HEX frames skipped).
    """

    def __init__(self) -> None:
        self.blocks_ok = 0
        self.checksum_errors = 0
        self.bytes_discarded = 0
        self.hex_frames = 0
        self._state = _UNSYNCED
        self._synced = False  # True when _block starts where the previous block ended
        self._block = bytearray()
        self._fields: list[tuple[int, bytes, bytes]] = []  # (offset of its '\r', label, value)
        self._label_start = 0
        self._value_start = 0
        self._in_hex = False
        self._hex_len = 0
        self._handlers: dict[int, Callable[[int, list[RawBlock]], bool]] = {
            _UNSYNCED: self._on_unsynced,
            _FIELD_LF: self._on_field_lf,
            _LABEL: self._on_label,
            _VALUE: self._on_value,
            _CHECKSUM_BYTE: self._on_checksum_byte,
            _BLOCK_CR: self._on_block_cr,
        }

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """Consume ``data``; return the blocks it completed whose checksum is valid, in order.

        Each block maps label -> value (``Checksum`` excluded). Never raises on any input.
        """
        return [block.fields for block in self.feed_raw(data)]

    def feed_raw(self, data: bytes) -> list[RawBlock]:
        """Like feed(), with each block's exact bytes too (to log or check a block)."""
        out: list[RawBlock] = []
        for byte in data:
            self._feed_byte(byte, out)
        return out

    def _feed_byte(self, byte: int, out: list[RawBlock]) -> None:
        if self._in_hex:
            if byte == _LF:
                self._in_hex = False
                self.hex_frames += 1
                return
            if byte in _HEX_DIGITS and self._hex_len < MAX_HEX_FRAME_BYTES:
                self._hex_len += 1
                return
            # Not a HEX frame after all: the ':' was noise, and so is the block around it.
            self._in_hex = False
            self.bytes_discarded += self._hex_len + 1
            self._abandon()
        if byte == _COLON and self._state != _CHECKSUM_BYTE:
            self._in_hex = True
            self._hex_len = 0
            return
        if not self._handlers[self._state](byte, out):
            # The byte does not fit where it came: drop the block and let the byte
            # start the hunt for the next one (it may be the '\r' that starts it).
            self._abandon()
            self._on_unsynced(byte, out)

    # Each handler returns False when the byte breaks the block's structure.

    def _on_unsynced(self, byte: int, _out: list[RawBlock]) -> bool:
        if byte == _CR:
            self._start_block(synced=False)
        else:
            self.bytes_discarded += 1
        return True

    def _on_field_lf(self, byte: int, _out: list[RawBlock]) -> bool:
        if byte != _LF:
            return False
        self._block.append(byte)
        self._label_start = len(self._block)
        self._state = _LABEL
        return True

    def _on_label(self, byte: int, _out: list[RawBlock]) -> bool:
        block = self._block
        if byte == _TAB and len(block) > self._label_start:
            is_checksum = block[self._label_start :] == _CHECKSUM_LABEL
            block.append(byte)
            self._value_start = len(block)
            self._state = _CHECKSUM_BYTE if is_checksum else _VALUE
            return True
        if 0x21 <= byte <= 0x7E and len(block) - self._label_start < MAX_LABEL_BYTES:
            block.append(byte)
            return True
        return False

    def _on_value(self, byte: int, _out: list[RawBlock]) -> bool:
        if byte == _CR:
            return self._end_field()
        if byte in (_LF, _TAB) or len(self._block) - self._value_start >= MAX_VALUE_BYTES:
            return False
        self._block.append(byte)
        return True

    def _on_checksum_byte(self, byte: int, out: list[RawBlock]) -> bool:
        self._block.append(byte)
        self._finish_block(out)
        return True

    def _on_block_cr(self, byte: int, _out: list[RawBlock]) -> bool:
        if byte == _CR:
            self._start_block(synced=True)
            return True
        self._synced = False
        self._state = _UNSYNCED
        self.bytes_discarded += 1
        return True

    def _start_block(self, *, synced: bool) -> None:
        self._block = bytearray(b"\r")
        self._fields = []
        self._synced = synced
        self._state = _FIELD_LF

    def _end_field(self) -> bool:
        block = self._block
        label = bytes(block[self._label_start : self._value_start - 1])
        value = bytes(block[self._value_start :])
        self._fields.append((self._label_start - 2, label, value))
        if len(self._fields) >= MAX_BLOCK_FIELDS or len(block) >= MAX_BLOCK_BYTES:
            return False
        block.append(_CR)
        self._state = _FIELD_LF
        return True

    def _abandon(self) -> None:
        """Drop the block in progress as garbage and hunt for the next start."""
        self.bytes_discarded += len(self._block)
        self._block = bytearray()
        self._fields = []
        self._synced = False
        self._state = _UNSYNCED

    def _finish_block(self, out: list[RawBlock]) -> None:
        block = self._block
        starts = [0] if self._synced else []
        starts += [
            offset
            for offset, label, _ in self._fields
            if label in _BLOCK_OPENING_LABELS and (offset > 0 or not self._synced)
        ]
        # A block is "known" to have failed when its start was known or looked like one;
        # the unlabelled tail of a block we attached in the middle of is not an error.
        looked_like_a_block = bool(starts)
        for start in starts:
            if sum(memoryview(block)[start:]) & 0xFF == 0:
                self.bytes_discarded += start
                self.blocks_ok += 1
                fields = {
                    label.decode("latin-1"): value.decode("latin-1")
                    for offset, label, value in self._fields
                    if offset >= start
                }
                out.append(RawBlock(fields, bytes(block[start:])))
                break
        else:
            if looked_like_a_block:
                self.checksum_errors += 1
            self.bytes_discarded += len(block)
        # Whatever the verdict, a block boundary is now known.
        self._block = bytearray()
        self._fields = []
        self._synced = True
        self._state = _BLOCK_CR
