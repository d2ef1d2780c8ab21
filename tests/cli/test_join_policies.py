"""`meshctl join-policies create|list|delete` against a real controller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import run
from tests.conftest import ControllerProcess, client_side_backend

# client-side behaviour: one backend is enough (tests/api runs the API on every backend)
backend = pytest.fixture(params=["sqlite"])(client_side_backend)


def test_join_policies_create_list_delete(controller: ControllerProcess, tmp_path: Path) -> None:
    r = run(
        controller,
        "-o",
        "json",
        "join-policies",
        "create",
        "prod-aws",
        "--cloud",
        "aws",
        "--account",
        "111122223333",
        "--account",
        "444455556666",
        "--region",
        "us-east-1=aws:us-east-1",
        "--max-nodes-per-region",
        "20",
        tmp=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["accounts"] == ["111122223333", "444455556666"] and created["regions"] == {
        "us-east-1": "aws:us-east-1"
    }
    r = run(
        controller,
        "join-policies",
        "create",
        "weu",
        "--cloud",
        "azure",
        "--account",
        "8d10da13-8125-4ba9-a717-bf7490507b3d",
        "--fixed-region",
        "azure:westeurope",
        tmp=tmp_path,
    )
    assert r.returncode == 0, r.stderr

    table = run(controller, "join-policies", "list", tmp=tmp_path)
    assert table.returncode == 0, table.stderr
    assert (
        "prod-aws" in table.stdout and "us-east-1=aws:us-east-1" in table.stdout and "azure:westeurope" in table.stdout
    )
    listed = json.loads(run(controller, "-o", "json", "join-policies", "list", tmp=tmp_path).stdout)
    assert [p["id"] for p in listed] == ["prod-aws", "weu"]

    again = run(controller, "join-policies", "create", "prod-aws", "--cloud", "aws", "--account", "1", "--any-region",
                tmp=tmp_path)  # fmt: skip
    assert again.returncode == 7 and "exists" in again.stderr, again.stderr
    azure_any = run(controller, "join-policies", "create", "x", "--cloud", "azure", "--account", "s", "--any-region",
                    tmp=tmp_path)  # fmt: skip
    assert azure_any.returncode == 7 and "fixed_region" in azure_any.stderr, azure_any.stderr
    bad = run(controller, "join-policies", "create", "y", "--cloud", "aws", "--account", "1", "--region", "us-east-1",
              tmp=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr, bad.stderr

    assert run(controller, "join-policies", "delete", "prod-aws", tmp=tmp_path).returncode == 0
    gone = run(controller, "join-policies", "delete", "prod-aws", tmp=tmp_path)
    assert gone.returncode == 6, gone.stderr
    listed = json.loads(run(controller, "-o", "json", "join-policies", "list", tmp=tmp_path).stdout)
    assert [p["id"] for p in listed] == ["weu"]
