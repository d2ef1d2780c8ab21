"""STAMP (RFC 8762) unauthenticated test packets: a pure codec and the reflector's decision.

Session-Sender test packet (44 bytes): sequence number (4), timestamp (8, NTP), error
estimate (2), MBZ (30). Session-Reflector test packet (44 bytes): sequence number (4),
timestamp T3 (8), error estimate (2), MBZ (2), receive timestamp T2 (8), sender sequence
number (4), sender timestamp T1 (8), sender error estimate (2), MBZ (2), sender TTL (1),
MBZ (3). RTT without the reflector's own time: (T4 - T1) - (T3 - T2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PACKET_SIZE = 44
MAX_REQUEST = 1472  # one unfragmented UDP payload on a 1500-byte path; anything larger is hostile
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
ERROR_ESTIMATE_SYNC = 0x8000  # S bit: the clock is synchronised to UTC
_SENDER = struct.Struct("!IQH30x")
_REFLECTOR = struct.Struct("!IQH2xQIQH2xB3x")
assert _SENDER.size == PACKET_SIZE and _REFLECTOR.size == PACKET_SIZE


class MalformedPacket(ValueError):
    """Short, oversized, or with bits set where the format requires zeros."""


def to_ntp(unix_seconds: float) -> int:
    """Unix time to a 64-bit NTP timestamp (32.32 fixed point)."""
    secs = unix_seconds + NTP_EPOCH_OFFSET
    whole = int(secs)
    return ((whole & 0xFFFFFFFF) << 32) | int((secs - whole) * (1 << 32)) & 0xFFFFFFFF


def from_ntp(ntp: int) -> float:
    return (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


@dataclass(frozen=True)
class SenderPacket:
    seq: int
    timestamp: int  # NTP
    error_estimate: int = ERROR_ESTIMATE_SYNC

    def encode(self) -> bytes:
        return _SENDER.pack(self.seq & 0xFFFFFFFF, self.timestamp, self.error_estimate)


@dataclass(frozen=True)
class ReflectorPacket:
    seq: int
    timestamp: int  # T3, NTP
    error_estimate: int
    receive_timestamp: int  # T2, NTP
    sender_seq: int
    sender_timestamp: int  # T1, NTP
    sender_error_estimate: int
    sender_ttl: int

    def encode(self) -> bytes:
        return _REFLECTOR.pack(
            self.seq,
            self.timestamp,
            self.error_estimate,
            self.receive_timestamp,
            self.sender_seq,
            self.sender_timestamp,
            self.sender_error_estimate,
            self.sender_ttl,
        )

    def rtt_seconds(self, received_at: float) -> float:
        """Round trip minus the time the packet spent inside the reflector."""
        inside = from_ntp(self.timestamp) - from_ntp(self.receive_timestamp)
        return (received_at - from_ntp(self.sender_timestamp)) - max(0.0, inside)


def parse_sender(data: bytes) -> SenderPacket:
    """A session-sender packet, strictly: 44..MAX_REQUEST bytes, padding all zero."""
    if len(data) < PACKET_SIZE:
        raise MalformedPacket(f"short packet: {len(data)} bytes")
    if len(data) > MAX_REQUEST:
        raise MalformedPacket(f"oversized packet: {len(data)} bytes")
    if any(data[14:]):
        raise MalformedPacket("MBZ bytes are not zero")
    seq, ts, err = _SENDER.unpack_from(data)
    if ts == 0:
        raise MalformedPacket("zero timestamp")
    return SenderPacket(seq, ts, err)


def parse_reflector(data: bytes) -> ReflectorPacket:
    if len(data) != PACKET_SIZE:
        raise MalformedPacket(f"reflected packet of {len(data)} bytes, expected {PACKET_SIZE}")
    if any(data[14:16]) or any(data[42:44]) or data[38:40] != b"\0\0" or data[41] != 0:
        raise MalformedPacket("MBZ bytes are not zero")
    return ReflectorPacket(*_REFLECTOR.unpack(data))


def sender_packet(seq: int, unix_seconds: float) -> bytes:
    """A session-sender packet sent now: `SenderPacket(seq, to_ntp(t)).encode()` without the object."""
    return _SENDER.pack(seq & 0xFFFFFFFF, to_ntp(unix_seconds), ERROR_ESTIMATE_SYNC)


def reply_rtt(data: bytes, received_at: float) -> tuple[int, float]:
    """(sender seq, RTT in seconds) of a reflected packet: `parse_reflector` and `rtt_seconds` in
    one step, no object made (the agent's hot path: one per reply)."""
    if len(data) != PACKET_SIZE or data[14:16] != b"\0\0" or data[38:40] != b"\0\0" or data[41:44] != bytes(3):
        raise MalformedPacket("not a reflected STAMP packet")
    _seq, t3, _err, t2, sender_seq, t1, _serr, _ttl = _REFLECTOR.unpack(data)
    inside = from_ntp(t3) - from_ntp(t2)
    return sender_seq, (received_at - from_ntp(t1)) - max(0.0, inside)


def reflect(
    data: bytes, received_at: float, sent_at: float, reflector_seq: int, ttl: int = 255, from_peer: bool = True
) -> bytes | None:
    """The reflector's whole decision: the reply, or None (drop) for anything not a valid request
    (as `parse_sender` judges it: 44..MAX_REQUEST bytes, padding zero, a timestamp).

    A reply is always 44 bytes and a valid request is at least 44: never an amplifier.
    """
    size = len(data)
    if not from_peer or size < PACKET_SIZE or size > MAX_REQUEST or data.count(0, 14) != size - 14:
        return None
    seq, ts, err = _SENDER.unpack_from(data)
    if ts == 0:
        return None
    return _REFLECTOR.pack(
        reflector_seq & 0xFFFFFFFF,
        to_ntp(sent_at),
        ERROR_ESTIMATE_SYNC,
        to_ntp(received_at),
        seq,
        ts,
        err,
        ttl & 0xFF,
    )
