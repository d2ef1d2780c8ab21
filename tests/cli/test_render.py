"""What a person sees at 80 columns: `meshctl status` and `meshctl matrix` rendered and checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from meshctl.cli import output
from meshctl.core.rttdata import parse_skyplane_csv
from tests.conftest import ControllerProcess

DATA = Path(__file__).resolve().parents[1] / "data" / "rtt-12-regions.csv"
REGIONS = [
    "aws:us-east-1",
    "aws:eu-west-1",
    "aws:ap-northeast-1",
    "aws:ap-southeast-2",
    "gcp:us-central1",
    "gcp:europe-west3",
    "gcp:asia-southeast1",
    "gcp:southamerica-east1",
    "azure:eastus",
    "azure:westeurope",
    "azure:australiaeast",
    "azure:japaneast",
]


def render(renderable: object, width: int = 80) -> str:
    con = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    con.print(renderable)
    return con.export_text()


def test_abbreviations_are_short_and_unique() -> None:
    short = output.abbreviations(REGIONS)
    assert short["aws:us-east-1"] == "a.ue1" and short["gcp:europe-west3"] == "g.ew3"
    assert short["azure:westeurope"] == "z.weu"
    assert len(set(short.values())) == len(REGIONS) and max(len(s) for s in short.values()) <= 6


def test_status_and_matrix_at_80_columns(controller: ControllerProcess, tmp_path: Path) -> None:
    rtt = parse_skyplane_csv(DATA.read_text())
    controller.feed_links(
        {(a, b): v for (a, b), v in rtt.items() if a in REGIONS and b in REGIONS},
        loss={("aws:us-east-1", "azure:westeurope"): 12.0},
    )
    with controller.client() as c:
        c.post("/v1/regions/gcp:europe-west3/drain", json={"reason": "provider incident 42"}).raise_for_status()
        controller.wait_for(lambda: len(c.get("/v1/links").json()["links"]) >= 100, what="links")
        status, links = c.get("/v1/status").json(), c.get("/v1/links").json()

    text = render(output.status_view(status))
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "1 drained" in text
    flat = " ".join(text.replace("│", " ").split())
    assert "provider incident" in flat and "42" in flat
    first = next(i for i, line in enumerate(lines) if "gcp:europe-west3" in line)
    assert all("aws:" not in line and "azure:" not in line for line in lines[:first]), "drained first"
    (tmp_path / "status.txt").write_text(text)

    text = render(output.matrix_view(links["links"], REGIONS))
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "a.ue1" in text and "z.weu" in text and "a.ue1=aws:us-east-1" in text
    row = next(line for line in lines if line.startswith("a.ue1 "))
    assert "!" in row, "the lossy link is marked"
    header = next(line for line in lines if "from\\to" in line)
    assert header.index("a.") < header.index("z.") < header.index("g."), "grouped by cloud"
    (tmp_path / "matrix.txt").write_text(text)

    # and the real command, as a person at an 80-column terminal runs it
    env = dict(os.environ, COLUMNS="80", MESHCTL_CONFIG=str(tmp_path / "c.yaml"))
    for cmd in (["status"], ["matrix"]):
        r = subprocess.run(
            [sys.executable, "-m", "meshctl", "--controller", controller.url, "--token", controller.admin_token, *cmd],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        assert all(len(line) <= 80 for line in r.stdout.splitlines()), cmd
