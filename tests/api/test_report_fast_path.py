"""POST /v1/reports on its hot path answers exactly as the documented FastAPI route did.

The expected bodies below were captured from the route as it was before the hot path (pydantic
parse behind FastAPI's dependency injection), for the same inputs, and are now written in the
problem-details format (RFC 9457) with the same information: each field, message and error
code. The decoder is also checked in-process against ReportIn on many generated and mutated
bodies: msgspec may take the fast way only where ReportIn would accept the body with the same
values.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from meshctl.service.report_codec import ReportColumns, parse_report
from meshctl.wire.schemas import ReportIn
from probes.reporter import with_peer_columns
from tests.conftest import ControllerProcess

# --- the decoder against ReportIn, in-process ---------------------------------------------

NODE = "n-0123456789abcdef"
PEERS = [f"n-{i:016x}" for i in range(3)]


def _outcome(fn: Callable[[bytes], ReportColumns], raw: bytes) -> tuple[str, Any]:
    try:
        r = fn(raw)
    except ValidationError as exc:
        return "invalid", exc.errors(include_url=False, include_input=False, include_context=False)
    cols = [[None if math.isnan(x) else x for x in a.tolist()] for a in (r.peers.sent, r.peers.received)]
    cols += [[None if math.isnan(x) else x for x in a.tolist()] for a in (r.peers.p50, r.peers.p90, r.peers.jitter)]
    return "ok", (r.node_id, r.seq, r.window_start, r.window_s, r.peers.ids, cols)


def _reference(raw: bytes) -> ReportColumns:
    return ReportColumns.from_model(ReportIn.model_validate_json(raw))


def assert_same(raw: bytes) -> None:
    assert _outcome(parse_report, raw) == _outcome(_reference, raw), raw[:300]


def _body(**over: Any) -> dict[str, Any]:
    peers = [
        {"peer_node_id": p, "sent": 10, "received": 9, "rtt_min_ms": 1, "rtt_p50_ms": 2.5, "rtt_p90_ms": 3.25}
        for p in PEERS
    ]
    body: dict[str, Any] = {
        "node_id": NODE,
        "seq": 3,
        "window_start": "2026-01-02T03:04:05.123456+00:00",
        "window_s": 5,
        "peers": peers,
    }
    body.update(over)
    return body


ODD = [
    None, True, False, 0, -0.0, -1, 1, 2.5, 7.0, 1e2, 10_000_000, 10_000_001, 60_000, 60_000.5, 2**62, 2**63, 2**64,
    10**400, 1e300, "", "7", "2.5", "x" * 65, "n-nope", [], {}, [1], {"a": 1},
    "2026-01-02T03:04:05Z", "2026-01-02 03:04:05", "2026-01-02", "2026-01-02T03:04:05.123456789+01:00",
    "1767323045", "yesterday", "2026-13-02T03:04:05Z", "2026-01-02T03:04:05+24:00", "\u00e9" * 64, "\u00e9" * 65,
]  # fmt: skip


@pytest.mark.parametrize("field", ["node_id", "seq", "window_start", "window_s", "peers"])
def test_decoder_agrees_on_odd_top_level_values(field: str) -> None:
    for value in ODD:
        assert_same(json.dumps(_body(**{field: value})).encode())
    assert_same(json.dumps({k: v for k, v in _body().items() if k != field}).encode())


@pytest.mark.parametrize(
    "field",
    [
        *("peer_node_id", "sent", "received", "rtt_min_ms", "rtt_p50_ms", "rtt_p90_ms", "rtt_max_ms", "jitter_ms"),
        *("reorders", "duplicates", "unknown"),
    ],
)
def test_decoder_agrees_on_odd_peer_values(field: str) -> None:
    for value in ODD:
        body = _body()
        body["peers"][1][field] = value
        assert_same(json.dumps(body).encode())
    body = _body()
    body["peers"][1].pop(field, None)
    assert_same(json.dumps(body).encode())


def test_decoder_agrees_on_raw_text() -> None:
    good = json.dumps(_body()).encode()
    for raw in [
        good,
        good + b" \n",
        good + b"x",
        b"\xef\xbb\xbf" + good,
        good.replace(b"2.5", b"NaN"),
        good.replace(b"2.5", b"Infinity"),
        good.replace(b"2.5", b"1e999"),
        good.replace(b"2.5", b"2.50000000000000000001"),
        good.replace(b'"seq": 3', b'"seq": 3, "seq": 4'),
        good.replace(b'"sent": 10', b'"sent": 10, "sent": 1'),
        good.replace(NODE.encode(), b"n-\xc3\x28"),
        good.replace(NODE.encode(), b"n-\\ud800"),
        good.replace(NODE.encode(), "n-\u00e9\U0001f600".encode()),
        b"",
        b"{}",
        b"[]",
        b"null",
        b"{not json",
        json.dumps(_body(peers=[{**_body()["peers"][0], "peer_node_id": f"x{i}"} for i in range(2001)])).encode(),
    ]:
        assert_same(raw)


def test_agents_reports_take_the_fast_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """What agents send never reaches ReportIn (which would cost ten times as much)."""

    def refuse(*_: Any) -> None:
        raise AssertionError("ReportIn was asked")

    monkeypatch.setattr(ReportIn, "model_validate_json", refuse)
    lost = {"peer_node_id": "n-lost", "sent": 5, "received": 0, "rtt_p50_ms": None, "jitter_ms": None}
    r = parse_report(json.dumps(_body(peers=[*_body()["peers"], lost])).encode())
    assert r.peers.ids == [*PEERS, "n-lost"] and r.peers.sent.tolist() == [10, 10, 10, 5]
    assert math.isnan(r.peers.p50[3]) and r.peers.p90.tolist()[:3] == [3.25] * 3
    assert r.window_start == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC).timestamp()


def test_cross_field_rules() -> None:
    for peer in [
        {"received": 11},  # more than sent
        {"received": 11, "duplicates": 1},  # allowed with duplicates
        {"received": 3, "rtt_p50_ms": None},  # rtt required once something came back
        {"received": 0, "rtt_p50_ms": None, "rtt_p90_ms": None},
        {"sent": 0, "received": 0, "rtt_p50_ms": None},
    ]:
        body = _body()
        body["peers"][2].update(peer)
        assert_same(json.dumps(body).encode())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
fields = st.sampled_from(
    [
        *("node_id", "seq", "window_start", "window_s", "peers", "sent", "received", "rtt_p50_ms", "rtt_p90_ms"),
        *("jitter_ms", "duplicates", "peer_node_id", "extra"),
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(fields, st.integers(0, 3), json_values | st.sampled_from(ODD)), max_size=4))
def test_decoder_agrees_on_generated_bodies(changes: list[tuple[str, int, Any]]) -> None:
    body = _body()
    for field, i, value in changes:
        if field in ("node_id", "seq", "window_start", "window_s", "peers", "extra"):
            body[field] = value
        elif isinstance(peers := body.get("peers"), list) and peers and isinstance(peers[i % len(peers)], dict):
            peers[i % len(peers)][field] = value
    assert_same(json.dumps(body).encode())


@pytest.mark.parametrize("peers_as", ["rows", "columns"])
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(list(b'{}[]",:0123456789.-+eE ntfalsu\\')))))
def test_decoder_agrees_on_mutated_text(peers_as: str, edits: list[tuple[int, int]]) -> None:
    raw = bytearray(json.dumps(_body() if peers_as == "rows" else _column_body()).encode())
    for at, byte in edits:
        at %= len(raw) + 1
        if byte % 3 == 0 and at < len(raw):
            del raw[at]
        else:
            raw[at:at] = bytes([byte])
    assert_same(bytes(raw))


# --- peers as columns: the same report, checked the same way ---------------------------------


def _as_columns(peers: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows as the columns the agent sends (probes.reporter)."""
    columns: dict[str, list[Any]] = with_peer_columns({"peers": peers})["peers"]
    return columns


def _column_body(**over: Any) -> dict[str, Any]:
    return {**_body(peers=_as_columns(_body()["peers"])), **over}


def test_columns_are_the_report_the_rows_are() -> None:
    lost = {"peer_node_id": "n-lost", "sent": 5, "received": 0, "reorders": 0, "duplicates": 1}
    for peers in (_body()["peers"], [*_body()["peers"], lost], []):
        rows, columns = _body(peers=peers), _body(peers=_as_columns(peers))
        assert _outcome(parse_report, json.dumps(columns).encode()) == _outcome(parse_report, json.dumps(rows).encode())
        assert_same(json.dumps(columns).encode())


def test_agents_columns_take_the_fast_way(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> None:
        raise AssertionError("ReportIn was asked")

    monkeypatch.setattr(ReportIn, "model_validate_json", refuse)
    body = _column_body()
    body["peers"]["rtt_p90_ms"][2] = None
    r = parse_report(json.dumps(body).encode())
    assert r.peers.ids == PEERS and r.peers.received.tolist() == [9, 9, 9] and math.isnan(r.peers.p90[2])
    assert all(math.isnan(x) for x in r.peers.jitter)  # a column left out: absent for every peer


@pytest.mark.parametrize(
    "field",
    [
        *("peer_node_id", "sent", "received", "rtt_min_ms", "rtt_p50_ms", "rtt_p90_ms", "rtt_max_ms", "jitter_ms"),
        *("reorders", "duplicates", "unknown"),
    ],
)
def test_decoder_agrees_on_odd_column_values(field: str) -> None:
    for value in ODD:
        body = _column_body()
        body["peers"].setdefault(field, [None] * len(PEERS))[1] = value
        assert_same(json.dumps(body).encode())
        body["peers"][field] = copy.deepcopy(value)  # the whole column
        assert_same(json.dumps(body).encode())
    for column in ([], [1], [None] * 2, [None] * 4):  # shorter, longer
        body = _column_body()
        body["peers"][field] = column
        assert_same(json.dumps(body).encode())
    body = _column_body()
    body["peers"].pop(field, None)
    assert_same(json.dumps(body).encode())


def test_columns_of_different_lengths_are_refused_by_name() -> None:
    body = _column_body()
    body["peers"]["received"] = [9, 9]
    with pytest.raises(ValidationError, match=r"every column must be as long as the others \(lengths \[2, 3\]\)"):
        parse_report(json.dumps(body).encode())
    body["peers"]["received"] = 9
    with pytest.raises(ValidationError, match="'received' must be a list with one element per peer"):
        parse_report(json.dumps(body).encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(fields, st.integers(0, 3), json_values | st.sampled_from(ODD)), max_size=4))
def test_decoder_agrees_on_generated_column_bodies(changes: list[tuple[str, int, Any]]) -> None:
    body = _column_body()
    for field, i, shared in changes:
        value = copy.deepcopy(shared)  # (ODD's lists are shared: never changed in place)
        if field in ("node_id", "seq", "window_start", "window_s", "peers", "extra"):
            body[field] = value
        elif isinstance(columns := body.get("peers"), dict):
            column = columns.setdefault(field, [None] * len(PEERS))
            if isinstance(column, list) and column and i < 3:
                column[i % len(column)] = value
            else:
                columns[field] = value
    assert_same(json.dumps(body).encode())


# --- through the server: status codes and bodies as before ---------------------------------

OK = "ok"
# type, title and status of each problem the report route answers
PROBLEM: dict[int, dict[str, Any]] = {
    401: {"type": "urn:meshctl:problem:unauthorized", "title": "Unauthorized", "status": 401},
    403: {"type": "urn:meshctl:problem:forbidden", "title": "Forbidden", "status": 403},
    409: {"type": "urn:meshctl:problem:conflict", "title": "Conflict", "status": 409},
    413: {"type": "urn:meshctl:problem:payload-too-large", "title": "Payload too large", "status": 413},
    422: {"type": "urn:meshctl:problem:invalid-input", "title": "Invalid input", "status": 422},
}
TOO_LARGE = {"detail": "the request body is larger than 1048576 bytes", "field": None}


def _field(loc: list[str]) -> str:
    """["peers", "0", "sent"] -> "peers[0].sent"; [] -> "body"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "body"


def _cases(a: str, b: str, c: str, now: datetime) -> list[tuple[str, bytes, str, int, Any]]:
    """(name, body, which token, status, expected body: JSON with {A}/{B}, OK for an ack, or text)."""

    def body(**over: Any) -> dict[str, Any]:
        peer = {"peer_node_id": b, "sent": 10, "received": 10, "rtt_p50_ms": 3.0}
        peer.update(over.pop("peer", {}))
        base = {"node_id": a, "seq": 7, "window_start": now.isoformat(), "window_s": 5, "peers": [peer]}
        base.update(over)
        return base

    def js(d: Any) -> bytes:
        return json.dumps(d).encode()

    def invalid(*errors: tuple[list[str], str, str]) -> dict[str, Any]:
        """A 422 problem listing each pydantic error: its field path, message and code."""
        listed = [{"field": _field(loc), "message": msg, "code": kind} for loc, msg, kind in errors]
        detail = "invalid input: " + "; ".join(f"{e['field']}: {e['message']}" for e in listed)
        return {**PROBLEM[422], "detail": detail, "field": listed[0]["field"], "errors": listed}

    def refused(detail: str, field: str | None) -> dict[str, Any]:
        """A problem from the service: its status (and so type and title) comes with the case."""
        return {"detail": detail, "field": field}

    p0 = ["peers", "0"]
    p2 = {"peer_node_id": c, "sent": 10, "received": 9, "rtt_p50_ms": 4.0, "rtt_p90_ms": 5.0}
    peer = body()["peers"][0]
    ge0 = ("Input should be greater than or equal to 0", "greater_than_equal")
    finite = (["peers", "0", "rtt_p50_ms"], "Input should be a finite number", "finite_number")
    exceed = ([], "Value error, peers[0].received must not exceed sent (plus duplicates)", "value_error")
    n = "node"
    return [
        ("nan", js(body()).replace(b'"rtt_p50_ms": 3.0', b'"rtt_p50_ms": NaN'), n, 422, invalid(finite)),
        ("inf", js(body()).replace(b'"rtt_p50_ms": 3.0', b'"rtt_p50_ms": Infinity'), n, 422, invalid(finite)),
        ("1e999", js(body()).replace(b'"rtt_p50_ms": 3.0', b'"rtt_p50_ms": 1e999'), n, 422, invalid(finite)),
        (
            "not json",
            b"{not json",
            n,
            422,
            invalid(([], "Invalid JSON: key must be a string at line 1 column 2", "json_invalid")),
        ),
        (
            "empty",
            b"",
            n,
            422,
            invalid(([], "Invalid JSON: EOF while parsing a value at line 1 column 0", "json_invalid")),
        ),
        ("array", b"[]", n, 422, invalid(([], "Input should be an object", "model_type"))),
        ("null", b"null", n, 422, invalid(([], "Input should be an object", "model_type"))),
        (
            "trailing",
            b'{"a": 1} x',
            n,
            422,
            invalid(([], "Invalid JSON: trailing characters at line 1 column 10", "json_invalid")),
        ),
        (
            "bom",
            b"\xef\xbb\xbf" + js(body()),
            n,
            422,
            invalid(([], "Invalid JSON: expected value at line 1 column 1", "json_invalid")),
        ),
        ("negative rtt", js(body(peer={"rtt_p50_ms": -1})), n, 422, invalid(([*p0, "rtt_p50_ms"], *ge0))),
        (
            "huge rtt",
            js(body(peer={"rtt_p50_ms": 60001})),
            n,
            422,
            invalid(([*p0, "rtt_p50_ms"], "Input should be less than or equal to 60000", "less_than_equal")),
        ),
        ("negative jitter", js(body(peer={"jitter_ms": -0.1})), n, 422, invalid(([*p0, "jitter_ms"], *ge0))),
        ("negative reorders", js(body(peer={"reorders": -1})), n, 422, invalid(([*p0, "reorders"], *ge0))),
        ("received > sent", js(body(peer={"received": 11})), n, 422, invalid(exceed)),
        (
            "received > sent, last key wins",
            js(body()).replace(b'"sent": 10', b'"sent": 10, "sent": 5'),
            n,
            422,
            invalid(exceed),
        ),
        (
            "no rtt",
            js(body(peer={"rtt_p50_ms": None})),
            n,
            422,
            invalid(([], "Value error, peers[0].rtt_p50_ms is required when received > 0", "value_error")),
        ),
        (
            "unknown peer",
            js(body(peer={"peer_node_id": "n-nope"})),
            n,
            422,
            refused("peers[0].peer_node_id: unknown node 'n-nope'", "peers[0].peer_node_id"),
        ),
        (
            "self",
            js(body(peer={"peer_node_id": a})),
            n,
            422,
            refused("peers[0].peer_node_id: a node does not probe itself", "peers[0].peer_node_id"),
        ),
        (
            "twice",
            js(body(peers=[peer, peer])),
            n,
            422,
            refused("peers[1].peer_node_id: listed twice", "peers[1].peer_node_id"),
        ),
        (
            "twice later",
            js(body(peers=[peer, p2, p2])),
            n,
            422,
            refused("peers[2].peer_node_id: listed twice", "peers[2].peer_node_id"),
        ),
        (
            "unknown before self",
            js(body(peers=[{**p2, "peer_node_id": "n-zz"}, {**p2, "peer_node_id": a}])),
            n,
            422,
            refused("peers[0].peer_node_id: unknown node 'n-zz'", "peers[0].peer_node_id"),
        ),
        (
            "future",
            js(body(window_start=(now + timedelta(hours=1)).isoformat())),
            n,
            422,
            refused("window_start: is in the future", "window_start"),
        ),
        (
            "too old",
            js(body(window_start=(now - timedelta(hours=3)).isoformat())),
            n,
            422,
            refused("window_start: older than the controller keeps", "window_start"),
        ),
        (
            "a date is midnight, too old",
            js(body(window_start="2020-01-02")),
            n,
            422,
            refused("window_start: older than the controller keeps", "window_start"),
        ),
        (
            "garbage time",
            js(body(window_start="yesterday")),
            n,
            422,
            invalid(
                (
                    ["window_start"],
                    "Input should be a valid datetime or date, input is too short",
                    "datetime_from_date_parsing",
                )
            ),
        ),
        (
            "window 0",
            js(body(window_s=0)),
            n,
            422,
            invalid((["window_s"], "Input should be greater than 0", "greater_than")),
        ),
        (
            "window 301",
            js(body(window_s=301)),
            n,
            422,
            invalid((["window_s"], "Input should be less than or equal to 300", "less_than_equal")),
        ),
        ("negative seq", js(body(seq=-1)), n, 422, invalid((["seq"], *ge0))),
        (
            "fractional seq",
            js(body(seq=7.5)),
            n,
            422,
            invalid(
                (["seq"], "Input should be a valid integer, got a number with a fractional part", "int_from_float")
            ),
        ),
        (
            "huge seq",
            js(body(seq=2**63)),
            n,
            422,
            invalid((["seq"], "Input should be less than or equal to 4611686018427387904", "less_than_equal")),
        ),
        ("negative sent", js(body(peer={"sent": -1})), n, 422, invalid(([*p0, "sent"], *ge0))),
        (
            "huge sent",
            js(body(peer={"sent": 10_000_001, "received": 1})),
            n,
            422,
            invalid(([*p0, "sent"], "Input should be less than or equal to 10000000", "less_than_equal")),
        ),
        (
            "extra field",
            js({**body(), "extra": 1}),
            n,
            422,
            invalid((["extra"], "Extra inputs are not permitted", "extra_forbidden")),
        ),
        (
            "extra peer field",
            js(body(peer={"foo": 1})),
            n,
            422,
            invalid(([*p0, "foo"], "Extra inputs are not permitted", "extra_forbidden")),
        ),
        (
            "no node_id",
            js({k: v for k, v in body().items() if k != "node_id"}),
            n,
            422,
            invalid((["node_id"], "Field required", "missing")),
        ),
        (
            "no sent",
            js(body(peers=[{k: v for k, v in peer.items() if k != "sent"}])),
            n,
            422,
            invalid(([*p0, "sent"], "Field required", "missing")),
        ),
        (
            "empty node_id",
            js(body(node_id="")),
            n,
            422,
            invalid((["node_id"], "String should have at least 1 character", "string_too_short")),
        ),
        (
            "long node_id",
            js(body(node_id="x" * 65)),
            n,
            422,
            invalid((["node_id"], "String should have at most 64 characters", "string_too_long")),
        ),
        (
            "peers not a list",
            js(body(peers=3)),
            n,
            422,
            invalid((["peers"], "Input should be a valid array", "list_type")),
        ),
        (
            "peers an object but not columns",
            js(body(peers={})),
            n,
            422,
            invalid(
                (
                    ["peers"],
                    "Value error, peers as columns: 'peer_node_id', 'sent', 'received' required"
                    " (or peers as a list of objects)",
                    "value_error",
                )
            ),
        ),
        (
            "peer not an object",
            js(body(peers=[None])),
            n,
            422,
            invalid((p0, "Input should be an object", "model_type")),
        ),
        (
            "2001 peers",
            js(body(peers=[peer] * 2001)),
            n,
            422,
            invalid((["peers"], "List should have at most 2000 items after validation, not 2001", "too_long")),
        ),
        (
            "many errors",
            js(body(window_s=0, seq=-1, peer={"rtt_p50_ms": -1, "sent": -1})),
            n,
            422,
            invalid(
                (["seq"], *ge0),
                (["window_s"], "Input should be greater than 0", "greater_than"),
                ([*p0, "sent"], *ge0),
                ([*p0, "rtt_p50_ms"], *ge0),
            ),
        ),
        (
            "other node",
            js(body(node_id=b)),
            n,
            403,
            refused("node_id: this credential belongs to {A}, not {B}", "node_id"),
        ),
        (
            "other node, bad too",
            js(body(node_id=b, window_s=0)),
            n,
            422,
            invalid((["window_s"], "Input should be greater than 0", "greater_than")),
        ),
        ("no token", js(body()), "", 401, refused("missing bearer token: send 'Authorization: Bearer <token>'", None)),
        ("bad token", js(body()), "msh_n_nope", 401, refused("invalid or revoked token", None)),
        (
            "reader token",
            js(body()),
            "reader",
            403,
            refused("this needs the node scope; the token has scope reader", None),
        ),
        (
            "admin token",
            js(body()),
            "admin",
            403,
            refused("this needs the node scope; the token has scope admin", None),
        ),
        ("too large", b"x" * 2_000_000, n, 413, TOO_LARGE),
        ("too large, bad token", b"x" * 2_000_000, "msh_n_nope", 413, TOO_LARGE),
        # accepted: lax forms go through ReportIn, as before
        ("ok", js(body(seq=10)), n, 202, OK),
        ("duplicate", js(body(seq=10)), n, 409, refused("seq: window 10 of {A} was already accepted", "seq")),
        (
            "duplicate seq as a string",
            js(body(seq="10")),
            n,
            409,
            refused("seq: window 10 of {A} was already accepted", "seq"),
        ),
        ("received > sent with duplicates", js(body(seq=11, peer={"received": 11, "duplicates": 1})), n, 202, OK),
        ("nothing back, no rtt", js(body(seq=12, peer={"received": 0, "rtt_p50_ms": None})), n, 202, OK),
        ("nothing sent", js(body(seq=13, peer={"sent": 0, "received": 0, "rtt_p50_ms": None})), n, 202, OK),
        ("numbers as strings", js(body(seq=14, window_s="5", peer={"sent": "10", "rtt_p50_ms": "3.0"})), n, 202, OK),
        ("seq as float", js(body(seq=15.0)), n, 202, OK),
        ("unix time", js(body(seq=16, window_start=int(now.timestamp()))), n, 202, OK),
        ("Z time", js(body(seq=17, window_start=now.strftime("%Y-%m-%dT%H:%M:%SZ"))), n, 202, OK),
        ("no peers", js(body(seq=18, peers=[])), n, 202, OK),
        ("two peers", js(body(seq=19, peers=[peer, p2])), n, 202, OK),
        ("two peers as columns", js(body(seq=21, peers=_as_columns([peer, p2]))), n, 202, OK),
        (
            "columns, one short",
            js(body(peers={"peer_node_id": [b, c], "sent": [10, 10], "received": [10]})),
            n,
            422,
            invalid(
                (
                    ["peers"],
                    "Value error, peers as columns: every column must be as long as the others (lengths [1, 2])",
                    "value_error",
                )
            ),
        ),
        (
            "columns, a peer twice",
            js(body(peers=_as_columns([peer, p2, peer]))),
            n,
            422,
            refused("peers[2].peer_node_id: listed twice", "peers[2].peer_node_id"),
        ),
        (
            "columns, received > sent",
            js(body(peers=_as_columns([p2, {**peer, "received": 11}]))),
            n,
            422,
            invalid(([], "Value error, peers[1].received must not exceed sent (plus duplicates)", "value_error")),
        ),
        (
            "node_id twice, last wins",
            js(body(seq=20)).replace(b'"node_id": ', b'"node_id": "x", "node_id": ', 1),
            n,
            202,
            OK,
        ),
    ]


def test_report_answers_as_before(controller: ControllerProcess) -> None:
    for region in ("aws:us-east-1", "gcp:us-east4", "azure:westeurope"):
        controller.add_region(region)
    a, b, c = (controller.join_node(r) for r in ("aws:us-east-1", "gcp:us-east4", "azure:westeurope"))
    with controller.client() as admin:
        reader = admin.post("/v1/tokens", json={"name": "r", "scope": "reader"}).json()["token"]
    tokens = {"node": a["node_token"], "reader": reader, "admin": controller.admin_token}
    accepted = []
    for name, raw, who, status, expected in _cases(a["node_id"], b["node_id"], c["node_id"], datetime.now(UTC)):
        with controller.client(tokens.get(who, who)) as client:
            r = client.post("/v1/reports", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status, (name, r.text)
        if expected is OK:
            seq = r.json()["seq"]
            assert r.json() == {"node_id": a["node_id"], "seq": seq, "accepted": True}, name
            assert r.headers["content-type"] == "application/json", name
            accepted.append(seq)
        else:
            assert r.headers["content-type"] == "application/problem+json", name
            text = json.dumps(expected).replace("{A}", a["node_id"]).replace("{B}", b["node_id"])
            want = {**PROBLEM[status], **json.loads(text)}
            if status == 422 and "errors" not in want and want["field"]:
                # a service check names its one field in errors[] too
                want["errors"] = [
                    {"field": want["field"], "message": want["detail"].removeprefix(f"{want['field']}: "), "code": None}
                ]
            assert r.json() == want, name
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer", name
    with controller.client() as admin:
        node = admin.get(f"/v1/nodes/{a['node_id']}").json()
        assert node["reports_accepted"] == len(accepted) and node["last_seq"] == max(accepted)
        wrong = admin.get("/v1/reports")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "OPTIONS, POST"
        openapi = admin.get("/openapi.json").json()
        doc = openapi["paths"]["/v1/reports"]["post"]
        ref = doc["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ReportIn"
        schema = openapi["components"]["schemas"]["ReportIn"]
        assert set(schema["required"]) >= {"node_id", "seq", "peers"}
        assert schema["properties"]["peers"]["items"]["$ref"] == "#/components/schemas/PeerStats"
        assert {"202", "401", "403", "409", "413", "422", "503"} <= set(doc["responses"])
