"""Victron VE.Direct text protocol: `framing` (pure), `fields` (pure), `reader` (the thread).

A VE.Direct device (SmartSolar/BlueSolar MPPT, BMV, SmartShunt) sends, unasked, one
block per second at 19200 8N1. A block is a run of fields ``\\r\\n<label>\\t<value>``
ending with ``\\r\\nChecksum\\t<one byte>``; the block is valid when all its bytes
(from the ``\\r\\n`` that starts it through the checksum byte) sum to 0 mod 256.
Devices may also interleave asynchronous HEX-protocol frames (``:`` hex digits
``\\n``) anywhere except in the checksum byte's place; they are not part of the
block and not counted in its checksum.

The 8-bit checksum is weak, so the framer is careful about *where* a block
starts: when it does not know (at attach, after garbage) it only tries starts at
fields that real devices put first (``PID``, and ``H1`` for the BMV's history
block), rather than every line, which would let roughly one truncated block in
twenty through on a noisy line.
"""
