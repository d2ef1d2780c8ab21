"""STAMP codec, the reflector's decision on hostile input, and the window statistics."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.wire.schemas import PeerStats
from probes.stamp import (
    MAX_REQUEST,
    PACKET_SIZE,
    MalformedPacket,
    SenderPacket,
    from_ntp,
    parse_reflector,
    parse_sender,
    reflect,
    reply_rtt,
    sender_packet,
    to_ntp,
)
from probes.stats import PeerWindow


def test_packet_sizes_and_round_trip() -> None:
    t1 = 1_800_000_000.25
    req = SenderPacket(seq=7, timestamp=to_ntp(t1)).encode()
    assert len(req) == PACKET_SIZE == 44
    assert parse_sender(req).seq == 7 and abs(from_ntp(parse_sender(req).timestamp) - t1) < 1e-6
    reply = reflect(req, received_at=t1 + 0.040, sent_at=t1 + 0.045, reflector_seq=3)
    assert reply is not None and len(reply) == 44
    pkt = parse_reflector(reply)
    assert pkt.sender_seq == 7 and pkt.seq == 3 and pkt.sender_ttl == 255
    # 90 ms round trip, 5 ms of it inside the reflector: 85 ms of path
    assert abs(pkt.rtt_seconds(t1 + 0.090) - 0.085) < 1e-6


def test_reflector_drops_what_it_should() -> None:
    good = SenderPacket(seq=1, timestamp=to_ntp(1e9)).encode()
    assert reflect(good, 1.0, 1.0, 0, from_peer=False) is None, "not a peer"
    assert reflect(good[:43], 1.0, 1.0, 0) is None, "short"
    assert reflect(good + b"\0" * (MAX_REQUEST - 44 + 1), 1.0, 1.0, 0) is None, "oversized"
    assert reflect(good[:20] + b"\x01" + good[21:], 1.0, 1.0, 0) is None, "MBZ set"
    assert reflect(struct.pack("!IQH30x", 1, 0, 0), 1.0, 1.0, 0) is None, "zero timestamp"
    padded = good + b"\0" * 100
    assert len(reflect(padded, 1.0, 1.0, 0) or b"") == 44, "a padded request gets a 44-byte reply"
    with pytest.raises(MalformedPacket):
        parse_reflector(b"\0" * 43)


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=0, max_size=2000))
def test_random_bytes_never_crash_and_never_amplify(data: bytes) -> None:
    reply = reflect(data, 1.0, 1.0, 0)
    if reply is not None:
        assert len(reply) <= len(data) and len(reply) == 44
        assert len(data) >= 44 and not any(data[14:])
    with contextlib.suppress(MalformedPacket):
        parse_reflector(data)


def _reflect_by_objects(data: bytes, received: float, sent: float, seq: int) -> bytes | None:
    """The reflector's decision written with the codec's objects (what `reflect` does without them)."""
    try:
        req = parse_sender(data)
    except MalformedPacket:
        return None
    reply = struct.pack(
        "!IQH2xQIQH2xB3x", seq, to_ntp(sent), 0x8000, to_ntp(received), req.seq, req.timestamp, req.error_estimate, 255
    )
    return reply


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.binary(min_size=0, max_size=200),
        st.builds(
            lambda seq, t, tail: sender_packet(seq, t) + tail,
            st.integers(0, 2**32 - 1),
            st.floats(1e9, 2.08e9),
            st.binary(max_size=40),
        ),
    ),
    st.floats(1e9, 2.08e9),
)
def test_the_fast_paths_agree_with_the_codec(data: bytes, t: float) -> None:
    """`reflect`, `sender_packet` and `reply_rtt` (no objects: one call per packet in the agent) give
    what the dataclass codec gives, on valid and on hostile input."""
    assert reflect(data, t, t + 0.001, 9) == _reflect_by_objects(data, t, t + 0.001, 9)
    assert sender_packet(5, t) == SenderPacket(seq=5, timestamp=to_ntp(t)).encode()
    try:
        pkt = parse_reflector(data)
    except MalformedPacket:
        with pytest.raises(MalformedPacket):
            reply_rtt(data, t)
    else:
        assert reply_rtt(data, t) == (pkt.sender_seq, pkt.rtt_seconds(t))
    reply = reflect(sender_packet(77, t), t + 0.040, t + 0.045, 3)
    assert reply is not None and reply_rtt(reply, t + 0.090) == (77, pytest.approx(0.085, abs=1e-6))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(1e9, 2.08e9))  # NTP era 0 ends in 2036
def test_ntp_round_trip(seq: int, t: float) -> None:
    pkt = parse_sender(SenderPacket(seq=seq, timestamp=to_ntp(t)).encode())
    assert pkt.seq == seq and abs(from_ntp(pkt.timestamp) - t) < 1e-6


def test_window_stats_loss_percentiles_jitter_reorders_duplicates() -> None:
    w = PeerWindow()
    for _ in range(10):
        w.on_sent()
    for seq, rtt in [(0, 80.0), (1, 82.0), (3, 81.0), (2, 90.0), (2, 90.0), (5, 80.0)]:
        w.on_reply(seq, rtt)
    s = w.summary("n-peer")
    assert s["sent"] == 10 and s["received"] == 5 and s["duplicates"] == 1 and s["reorders"] == 1
    assert s["rtt_min_ms"] == 80.0 and s["rtt_max_ms"] == 90.0 and s["rtt_p50_ms"] == 81.0
    expected_j = 0.0
    prev = None
    for r in [80.0, 82.0, 81.0, 90.0, 80.0]:
        if prev is not None:
            expected_j += (abs(r - prev) - expected_j) / 16
        prev = r
    assert abs(float(s["jitter_ms"]) - expected_j) < 1e-3  # type: ignore[arg-type]
    PeerStats.model_validate(s)  # what the controller accepts
    lost = PeerWindow()
    lost.on_sent()
    body = lost.summary("n-peer")
    assert body["received"] == 0 and "rtt_p50_ms" not in body
    PeerStats.model_validate(body)
