"""The lab's pure parts: topology files (every error names its key) and the WAN model's verdicts."""

from __future__ import annotations

import ipaddress
import itertools
import time
from pathlib import Path

import pytest
import yaml

from meshctl.core.catalog import lookup
from meshctl.lab.topology import TopologyError, dump, from_skyplane, load_topology, parse
from meshctl.lab.wanrouter import Fault, FaultError, Lateness, WanModel, WanRouter

SKYPLANE = Path(__file__).resolve().parents[1] / "data" / "rtt-12-regions.csv"
GOOD = {
    "name": "t",
    "regions": {"aws:us-east-1": {"nodes": 2}, "gcp:us-east4": None, "azure:eastus": 1},
    "rtt_ms": [
        ["aws:us-east-1", "gcp:us-east4", 2.9],
        ["aws:us-east-1", "azure:eastus", 1.9],
        ["gcp:us-east4", "azure:eastus", 2.4],
    ],
}


def test_default_topology_is_nine_regions_on_three_clouds_with_every_pair() -> None:
    topo = load_topology()
    assert len(topo.regions) >= 9 and {r.split(":")[0] for r in topo.regions} == {"aws", "gcp", "azure"}
    assert all(1 <= n <= 2 for n in topo.regions.values()) and 2 in topo.regions.values()
    for a, b in itertools.permutations(topo.regions, 2):
        assert topo.rtt(a, b) == topo.rtt(b, a) > 0
    assert "skyplane" in topo.source.lower()
    for r in topo.regions:  # placement needs location and metro: every lab region is in the catalogue
        assert lookup(r) is not None, r
    assert topo.rtt("aws:us-east-1", "azure:eastus") == 1.9  # the Skyplane figure the data README cites


def test_parse_and_dump_round_trip() -> None:
    topo = parse(GOOD)
    assert topo.regions == {"aws:us-east-1": 2, "gcp:us-east4": 1, "azure:eastus": 1}
    assert topo.node_regions() == ["aws:us-east-1", "aws:us-east-1", "gcp:us-east4", "azure:eastus"]
    again = parse(yaml.safe_load(dump(topo, "a header")))
    assert again.regions == topo.regions and again.rtt_ms == topo.rtt_ms


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"regions": {"aws:us-east-1": 1}}, "regions: expected a mapping of at least 2"),
        (
            {"regions": {"AWS us-east-1": 1, "gcp:us-east4": 1}},
            "regions.AWS us-east-1: 'AWS us-east-1' is not a region id",
        ),
        ({"regions": {"aws:us-east-1": {"nodes": 0}, "gcp:us-east4": 1}}, "regions.aws:us-east-1.nodes: must be"),
        ({"rtt_ms": [["aws:us-east-1", "gcp:us-east4", float("nan")]]}, "rtt_ms[0]: RTT must be a number"),
        ({"rtt_ms": [["aws:us-east-1", "gcp:us-east4", -3]]}, "rtt_ms[0]: RTT must be a number"),
        ({"rtt_ms": [["aws:us-east-1", "oci:x", 3]]}, "rtt_ms[0]: 'oci:x' is not in regions"),
        ({"rtt_ms": [["aws:us-east-1", "gcp:us-east4"]]}, "rtt_ms[0]: expected [region, region, milliseconds]"),
        ({"rtt_ms": GOOD["rtt_ms"][:2]}, "no RTT for the pair gcp:us-east4 azure:eastus"),
        ({"rtt_ms": [*GOOD["rtt_ms"], ["gcp:us-east4", "aws:us-east-1", 3]]}, "is listed twice"),
        ({"colour": "blue"}, "unknown key 'colour'"),
    ],
)
def test_bad_topology_names_the_key(change: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError) as err:
        parse({**GOOD, **change}, "topo.yaml")
    assert str(err.value).startswith("topo.yaml: ") and message in str(err.value)


def test_unreadable_or_broken_files(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("regions: [unclosed\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(tmp_path / "broken.yaml")


def test_from_skyplane_takes_the_median_of_both_directions_premium_only() -> None:
    text = SKYPLANE.read_text()
    topo = from_skyplane(text, {"azure:westeurope": 1, "azure:australiaeast": 1}, "x", "src")
    rows = [ln.split(",") for ln in text.splitlines() if not ln.startswith(("#", "src_region"))]
    both = sorted(
        float(r[7])
        for r in rows
        if {r[0], r[3]} == {"azure:westeurope", "azure:australiaeast"} and r[1] == r[4] == "PREMIUM"
    )
    assert both and topo.rtt("azure:westeurope", "azure:australiaeast") == round(
        (both[(len(both) - 1) // 2] + both[len(both) // 2]) / 2, 1
    )
    with pytest.raises(TopologyError, match="no PREMIUM measurement"):
        from_skyplane(text, {"azure:westeurope": 1, "aws:nowhere-1": 1}, "x", "src")


def model() -> WanModel:
    return WanModel(
        {"10.0.1.2": "a:x", "10.0.2.2": "b:y", "10.0.3.2": "c:z"},
        {("a:x", "b:y"): 10.0, ("b:y", "a:x"): 10.0, ("a:x", "c:z"): 40.0, ("c:z", "a:x"): 40.0},
        default_one_way_ms=1.0,
    )


def test_base_delays_and_calibration() -> None:
    m = model()
    assert m.verdict("10.0.1.2", "10.0.2.2").delay_s == pytest.approx(0.010)
    assert m.verdict("10.0.2.2", "10.0.3.2").delay_s == pytest.approx(0.001)  # not listed: the default
    m.command({"op": "calibrate", "one_way_ms": 0.5})
    assert m.verdict("10.0.1.2", "10.0.3.2").delay_s == pytest.approx(0.0395)
    m.command({"op": "calibrate", "one_way_ms": 5})
    assert m.verdict("10.0.2.2", "10.0.3.2").delay_s == 0.0  # never negative
    assert len(m.compile()) == 6 and all(len(k[0]) == 4 for k in m.compile())


def test_faults_compose_and_heal() -> None:
    m = model()
    m.command({"op": "fault", "region": "a:x", "kind": "delay", "value": 30})
    assert m.verdict("10.0.2.2", "10.0.1.2").delay_s == pytest.approx(0.025)  # +30 ms RTT = +15 each way
    m.command({"op": "fault-link", "a": "b:y", "b": "a:x", "kind": "loss", "value": 50})
    m.command({"op": "fault", "region": "b:y", "kind": "loss", "value": 50})
    v = m.verdict("10.0.1.2", "10.0.2.2")
    assert v.drop == pytest.approx(0.75) and v.delay_s == pytest.approx(0.025)
    assert m.verdict("10.0.1.2", "10.0.3.2").drop == 0  # the link fault is only a<->b
    m.command({"op": "fault", "region": "c:z", "kind": "blackhole"})
    assert m.verdict("10.0.3.2", "10.0.2.2").drop == 1.0 and m.verdict("10.0.2.2", "10.0.3.2").drop == 1.0
    answer = m.command({"op": "heal", "region": "c:z"})
    assert m.verdict("10.0.3.2", "10.0.1.2").drop == 0 and len(answer["faults"]) == 3
    m.command({"op": "heal"})
    assert m.command({"op": "status"})["faults"] == [] and m.verdict("10.0.1.2", "10.0.2.2") == model().verdict(
        "10.0.1.2", "10.0.2.2"
    )


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ({"op": "fault", "region": "x:nope", "kind": "blackhole"}, "not a region of this lab"),
        ({"op": "fault", "region": "a:x", "kind": "fire"}, "fault kind must be one of"),
        ({"op": "fault", "region": "a:x", "kind": "loss"}, "loss needs a value"),
        ({"op": "fault", "region": "a:x", "kind": "loss", "value": 150}, "loss must be a percentage"),
        ({"op": "fault", "region": "a:x", "kind": "delay", "value": "soon"}, "value must be a number"),
        ({"op": "fault-link", "a": "a:x", "b": "a:x", "kind": "blackhole"}, "two different regions"),
        ({"op": "reboot"}, "op must be"),
    ],
)
def test_bad_fault_commands_change_nothing(cmd: dict[str, object], message: str) -> None:
    m = model()
    before = m.compile()
    with pytest.raises(FaultError, match=message):
        m.command(cmd)
    assert m.compile() == before and m.describe_faults() == []


def test_fault_descriptions() -> None:
    assert Fault.make("blackhole", None).describe() == "blackhole"
    assert Fault.make("loss", 30).describe() == "loss 30%"
    assert Fault.make("delay", 100).describe() == "delay +100 ms"


def test_dump_quotes_any_source() -> None:
    """A plain one-word source once dumped as `source: x\\n...` (a YAML document end): not loadable."""
    for source in ("Skyplane", "it's: a table", ""):
        topo = parse({**GOOD, "source": source})
        assert parse(yaml.safe_load(dump(topo))).source == source


def _ipv4(src: str, dst: str) -> bytes:
    return bytes([0x45]) + bytes(11) + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed


def test_router_writes_each_packet_when_due_in_due_order_and_drops_blackholed() -> None:
    router = WanRouter(-1, model())  # one-way: a:x <-> b:y 10 ms, a:x <-> c:z 40 ms, others 1 ms
    written: list[bytes] = []
    now = time.monotonic()
    far, near, other = _ipv4("10.0.1.2", "10.0.3.2"), _ipv4("10.0.1.2", "10.0.2.2"), _ipv4("10.0.2.2", "10.0.3.2")
    for pkt in (far, near, other, b"\x60" + bytes(39), b"short"):  # an IPv6 and a runt packet: ignored
        router.accept(pkt, now)
    wait = router.flush(written.append)
    assert written == [] or written == [other]  # only the 1 ms one can be due yet
    assert wait is not None and wait <= 0.040
    deadline = now + 0.2
    while router.flush(written.append) is not None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert written == [other, near, far]
    assert router.forwarded == 3 and router.late.n == 3
    router.control({"op": "fault", "region": "c:z", "kind": "blackhole"})
    router.accept(far, time.monotonic())
    assert router.flush(written.append) is None and router.dropped == 1 and len(written) == 3
    answer = router.control({"op": "status", "reset_late": True})
    assert answer["late"]["packets"] == 3 and answer["forwarded"] == 3 and router.late.n == 0


def test_lateness_quantiles() -> None:
    late = Lateness()
    assert late.summary() == {"packets": 0, "p50_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0, "max_ms": 0.0}
    for _ in range(990):
        late.add(0.00005)  # 0.05 ms: the first 0.1 ms bucket
    for _ in range(10):
        late.add(0.0123)
    late.add(-0.001)  # early never counts as negative
    s = late.summary()
    assert s["packets"] == 1001 and s["p50_ms"] == 0.1 and s["p99_ms"] == 0.1 and s["p999_ms"] == 12.4
    assert s["max_ms"] == 12.3
    late.add(5.0)  # beyond the histogram: the last bucket, the true maximum kept
    assert late.quantile_ms(1.0) == 100.0 and late.summary()["max_ms"] == 5000.0
