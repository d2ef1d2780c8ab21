"""Report bodies as the controller takes them: decoded once, checked, peers as numpy columns.

The hot path of `POST /v1/reports` decodes with msgspec; `ReportIn` (the documented wire
model) is the referee for anything msgspec does not take, so errors read the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np
from pydantic import TypeAdapter

from meshctl.wire.schemas import ReportIn, RerouteIn

# The same report body for msgspec, the hot path's decoder (a fifth of pydantic's time on a
# 150-peer report). Never laxer than ReportIn: a body msgspec accepts, ReportIn accepts with the
# same values; anything else (bad input, and lax forms such as numbers in strings) goes to
# ReportIn, whose answer (value or errors) stands. tests/api/test_report_fast_path.py guards it.

_WireMs = Annotated[float, msgspec.Meta(ge=0, le=60_000)]
_WireId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_WireCount = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]


class _PeerStatsWire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    peer_node_id: _WireId
    sent: _WireCount
    received: _WireCount
    rtt_min_ms: _WireMs | None = None
    rtt_p50_ms: _WireMs | None = None
    rtt_p90_ms: _WireMs | None = None
    rtt_max_ms: _WireMs | None = None
    jitter_ms: _WireMs | None = None
    reorders: Annotated[int, msgspec.Meta(ge=0)] = 0
    duplicates: Annotated[int, msgspec.Meta(ge=0)] = 0


_Column = msgspec.UnsetType  # a column left out (not null: ReportIn refuses a column that is not a list)
_MAX_PEERS = msgspec.Meta(max_length=2000)


class _PeerColumnsWire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """`peers` as columns (ReportIn's `peer_rows`): a null element is a field left out of that row."""

    peer_node_id: Annotated[list[_WireId], _MAX_PEERS]
    sent: Annotated[list[_WireCount], _MAX_PEERS]
    received: Annotated[list[_WireCount], _MAX_PEERS]
    rtt_min_ms: Annotated[list[_WireMs | None], _MAX_PEERS] | _Column = msgspec.UNSET
    rtt_p50_ms: Annotated[list[_WireMs | None], _MAX_PEERS] | _Column = msgspec.UNSET
    rtt_p90_ms: Annotated[list[_WireMs | None], _MAX_PEERS] | _Column = msgspec.UNSET
    rtt_max_ms: Annotated[list[_WireMs | None], _MAX_PEERS] | _Column = msgspec.UNSET
    jitter_ms: Annotated[list[_WireMs | None], _MAX_PEERS] | _Column = msgspec.UNSET
    reorders: Annotated[list[Annotated[int, msgspec.Meta(ge=0)] | None], _MAX_PEERS] | _Column = msgspec.UNSET
    duplicates: Annotated[list[Annotated[int, msgspec.Meta(ge=0)] | None], _MAX_PEERS] | _Column = msgspec.UNSET


class _ReportWire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    node_id: _WireId
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**62)]
    window_start: str  # read by pydantic's own datetime rules
    window_s: Annotated[float, msgspec.Meta(gt=0, le=300)]
    peers: Annotated[list[_PeerStatsWire], _MAX_PEERS] | _PeerColumnsWire
    reroutes: list[Any] = msgspec.field(default_factory=list)  # rare: checked by ReportIn's own rules


_REPORT_DECODER = msgspec.json.Decoder(_ReportWire)
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


@dataclass(frozen=True, slots=True)
class PeerColumns:
    """A report's peers as columns: element i of each array belongs to ids[i].

    Counts are float64 (exact below 2**53); NaN marks an RTT or jitter that was null or absent.
    """

    ids: list[str]
    sent: np.ndarray
    received: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    jitter: np.ndarray

    @classmethod
    def from_rows(cls, ids: list[str], rows: list[tuple[float | None, ...]]) -> PeerColumns:
        """From (sent, received, p50, p90, jitter) per peer; None becomes NaN."""
        cols = np.array(rows, dtype=np.float64).reshape(len(ids), 5).T
        return cls.from_matrix(ids, cols)

    @classmethod
    def from_matrix(cls, ids: list[str], cols: np.ndarray) -> PeerColumns:
        """From a 5 x len(ids) matrix: rows sent, received, p50, p90, jitter (as `matrix` gives)."""
        return cls(ids, cols[0], cols[1], cols[2], cols[3], cols[4])

    def matrix(self) -> np.ndarray:
        """The columns as one 5 x len(ids) float64 matrix (the store's form: store/reports.py)."""
        return np.stack([self.sent, self.received, self.p50, self.p90, self.jitter]).reshape(5, len(self.ids))


@dataclass(frozen=True, slots=True)
class ReportColumns:
    """A valid report (a ReportIn) as the controller takes it."""

    node_id: str
    seq: int
    window_start: float  # epoch seconds
    window_s: float
    peers: PeerColumns
    reroutes: tuple[RerouteIn, ...] = ()  # local fast reroutes the agent made (probes.dataplane)

    @classmethod
    def from_model(cls, report: ReportIn) -> ReportColumns:
        ps = report.peers
        peers = PeerColumns.from_rows(
            [p.peer_node_id for p in ps], [(p.sent, p.received, p.rtt_p50_ms, p.rtt_p90_ms, p.jitter_ms) for p in ps]
        )
        return cls(
            report.node_id, report.seq, report.window_start.timestamp(), report.window_s, peers, tuple(report.reroutes)
        )


def parse_report(raw: bytes | str) -> ReportColumns:
    """Decode and check a report body exactly as `ReportIn.model_validate_json` does.

    Raises pydantic's ValidationError, with ReportIn's own errors, for a bad body.
    """
    try:
        report = _from_wire(_REPORT_DECODER.decode(raw))
    except (msgspec.MsgspecError, ValueError, OverflowError):  # pydantic's ValidationError is a ValueError
        report = None
    return report if report is not None else ReportColumns.from_model(ReportIn.model_validate_json(raw))


_GET = {name: attrgetter(name) for name in _PeerStatsWire.__struct_fields__}


def _from_wire(w: _ReportWire) -> ReportColumns | None:
    """Columns of a body msgspec accepted; None when ReportIn's cross-field checks fail."""
    if w.reroutes:
        return None  # rare: ReportIn checks them, with its own errors
    peers = _rows_as_columns(w.peers) if isinstance(w.peers, list) else _columns(w.peers)
    if peers is None:
        return None
    return ReportColumns(w.node_id, w.seq, _DATETIME.validate_python(w.window_start).timestamp(), w.window_s, peers)


def _rows_as_columns(ps: list[_PeerStatsWire]) -> PeerColumns | None:
    n = len(ps)

    def ints(name: str) -> np.ndarray:  # fromiter: np.array converts Python ints to float slowly
        return np.fromiter(map(_GET[name], ps), dtype=np.float64, count=n)

    def floats(name: str) -> np.ndarray:  # None becomes NaN
        return np.array(list(map(_GET[name], ps)), dtype=np.float64)

    sent, received, p50 = ints("sent"), ints("received"), floats("rtt_p50_ms")
    if not _consistent(sent, received, p50, lambda: ints("duplicates")):
        return None
    ids = list(map(_GET["peer_node_id"], ps))
    return PeerColumns(ids, sent, received, p50, floats("rtt_p90_ms"), floats("jitter_ms"))


def _columns(c: _PeerColumnsWire) -> PeerColumns | None:
    n = len(c.peer_node_id)
    given = [v for v in (getattr(c, f) for f in _PeerColumnsWire.__struct_fields__) if v is not msgspec.UNSET]
    if any(len(v) != n for v in given):
        return None  # ReportIn says which column

    def column(values: Sequence[Any] | msgspec.UnsetType) -> np.ndarray:  # None (and a left-out column) is NaN
        if isinstance(values, msgspec.UnsetType):
            return np.full(n, np.nan)
        return np.array(values, dtype=np.float64).reshape(n)

    def duplicates() -> np.ndarray:
        return np.nan_to_num(column(c.duplicates), nan=0.0)

    sent, received, p50 = column(c.sent), column(c.received), column(c.rtt_p50_ms)
    if not _consistent(sent, received, p50, duplicates):
        return None
    return PeerColumns(c.peer_node_id, sent, received, p50, column(c.rtt_p90_ms), column(c.jitter_ms))


def _consistent(sent: np.ndarray, received: np.ndarray, p50: np.ndarray, duplicates: Callable[[], np.ndarray]) -> bool:
    """ReportIn._consistent: received within sent (plus duplicates), an RTT once something came back."""
    over = received > sent
    return not ((over.any() and (received > sent + duplicates()).any()) or ((received > 0) & np.isnan(p50)).any())
