"""The scale simulator (issue 18), briefly and small: what a person running it would check.

A real controller process, 3 regions x 2 synthetic agents speaking the real report format, 1 s
windows, one region dark after 2 s: every acknowledged report is stored, the dark region is
drained (the controller's own `drain` event), and the JSON line has the figures the issue names.
Not a timing test: no figure is compared with a target.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshctl.lab.simulate import RTT_CSV, SimError, parse_fault, peer_entry, peers_json, region_ids
from probes.reporter import with_peer_columns

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "reports_per_s",
    "lost",
    "report_p99_ms",
    "recompute_ms_p50",
    "controller_cpu_percent",
    "controller_rss_mib",
    "outage_to_drain_s",
    "route_p99_ms",
    "db_mib_per_hour",
    "healthz_per_s",
    "ratio_reports_healthz",
    "joins_per_s",
}


def test_fault_names_a_region_by_id_or_index() -> None:
    regions, rtt = region_ids(3, RTT_CSV)
    assert parse_fault("dark:1@5", regions).regions == (regions[1],)
    lossy = parse_fault(f"lossy:{regions[0]}/{regions[2]}@7.5", regions)
    assert (lossy.kind, lossy.regions, lossy.at_s) == ("lossy", (regions[0], regions[2]), 7.5)
    assert rtt(0, 1) > 0
    with pytest.raises(SimError, match="no region"):
        parse_fault("dark:aws:nowhere-9@5", regions)


def test_synthetic_peers_are_what_the_agent_sends() -> None:
    """As columns, exactly `probes.reporter.with_peer_columns` of the rows (a lost peer included)."""
    entries = [peer_entry("n-a", 12.5, 25, 0.0, 0.3), peer_entry("n-b", 80.0, 25, 100.0, 0.5)]
    rows = json.loads(peers_json(entries, columns=False))
    assert rows[1] == {"peer_node_id": "n-b", "sent": 25, "received": 0, "reorders": 0, "duplicates": 0}
    assert rows[0]["rtt_p50_ms"] == 12.5 and rows[0]["received"] == 25
    assert json.loads(peers_json(entries, columns=True)) == with_peer_columns({"peers": rows})["peers"]


def test_regions_past_the_table_are_copies_with_their_own_ids() -> None:
    regions, rtt = region_ids(150, RTT_CSV)
    assert len(set(regions)) == 150
    assert rtt(0, 69) == 2.0  # region 69 is a copy of region 0


def bench_scale(*args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    """`python -m bench.bench_scale ARGS` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bench.bench_scale", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The run's JSON line (its last), once it exited 0."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_small_fleet_nothing_lost_and_the_dark_region_drained() -> None:
    fleet = ["--regions", "3", "--nodes-per-region", "2", "--duration", "12", "--window", "1"]
    result = last_json(bench_scale(*fleet, "--route-qps", "5", "--fault", "dark:1@2", "-o", "json"))
    assert set(result) >= KEYS
    assert result["acknowledged"] > 0 and result["reports_per_s"] > 0
    assert result["lost"] == 0
    assert result["stored"] == result["acknowledged"]
    dark = region_ids(3, RTT_CSV)[0][1]
    assert dark in result["drained"]
    assert result["outage_to_drain_s"][dark] is not None and result["outage_to_drain_s"][dark] > 0
    assert result["route_queries"] > 0


@pytest.mark.slow
def test_two_replicas_on_postgresql_store_every_acknowledged_report_and_say_how_ingestion_scaled() -> None:
    """Issue 18: the same fleet on 1 and then 2 replicas of one PostgreSQL store, each node reporting
    to one replica (as behind a load balancer): the acknowledged count equals the stored count in
    both runs, each run has a database of its own, and the last line says how ingestion scaled."""
    from tests.conftest import PG_URL, _pg_available

    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}")
    fleet = ["--regions", "3", "--nodes-per-region", "2", "--duration", "6", "--window", "1", "--route-qps", "5"]
    proc = bench_scale(*fleet, "--database-url", PG_URL, "--replicas", "1,2", "-o", "json")
    result = last_json(proc)
    assert set(result) >= KEYS
    first, last = result["runs"]
    assert (first["replicas"], last["replicas"]) == (1, 2) == tuple(result["scaling"]["replicas"])
    for run in (first, last):
        assert run["database"] == "postgresql"
        assert run["acknowledged"] > 0 and run["lost"] == 0
        assert run["stored"] == run["acknowledged"]  # a fresh database per run: no earlier run's rows
    assert result["scaling"]["ratio"] == round(last["reports_per_s"] / first["reports_per_s"], 2)
    assert "ingestion with replicas: 1 -> 2" in proc.stdout


@pytest.mark.slow
def test_before_runs_another_checkouts_controller_first_and_prints_both(tmp_path: Path) -> None:
    """`--before DIR`: the same fleet against the controller of another checkout, then this one,
    side by side (here the other checkout is a copy of this one's code, as `git archive` makes)."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(ROOT / "meshctl", old / "meshctl", ignore=shutil.ignore_patterns("__pycache__"))
    fleet = ["--regions", "3", "--nodes-per-region", "2", "--duration", "4", "--window", "1", "--route-qps", "5"]
    proc = bench_scale(*fleet, "--before", str(old), "-o", "json")
    result = last_json(proc)
    before = result["before"]
    for run in (before, result):
        assert run["acknowledged"] > 0 and run["lost"] == 0 and run["stored"] == run["acknowledged"]
    assert f"[before: the controller of {old}]" in proc.stdout
    table = proc.stdout[proc.stdout.index("after/before") :]
    assert f"{'report p99, ms':38} {before['report_p99_ms']!s:>12} {result['report_p99_ms']!s:>12}" in table


def test_before_must_be_a_checkout(tmp_path: Path) -> None:
    proc = bench_scale("--regions", "2", "--before", str(tmp_path), timeout=60)
    assert proc.returncode != 0
    assert "not a checkout of meshctl" in proc.stderr


def test_several_replicas_need_postgresql() -> None:
    proc = bench_scale("--regions", "2", "--nodes-per-region", "1", "--replicas", "2", timeout=60)
    assert proc.returncode != 0
    assert "PostgreSQL" in proc.stderr
