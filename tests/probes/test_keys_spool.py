"""The node's key stays on the node with mode 0600; the spool keeps order and its bounds."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from meshctl.wire.schemas import NodeJoin
from probes.keys import PENDING_KEY_FILE, PRIVATE_KEY_FILE, load_or_create, new_pending, promote_pending
from probes.spool import Spool


def test_key_made_once_mode_0600_and_public_key_valid(tmp_path: Path) -> None:
    private, public = load_or_create(tmp_path / "state")
    path = tmp_path / "state" / PRIVATE_KEY_FILE
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert len(base64.b64decode(private)) == 32 and private != public
    assert load_or_create(tmp_path / "state") == (private, public)
    NodeJoin(
        join_token="msh_j_" + "x" * 20, region="aws:us-east-1", name="n1", public_key=public, endpoint="192.0.2.1:51820"
    )
    new_private, new_public = new_pending(tmp_path / "state")
    assert oct((tmp_path / "state" / PENDING_KEY_FILE).stat().st_mode & 0o777) == "0o600"
    assert new_public != public and load_or_create(tmp_path / "state") == (private, public), "pending is not active"
    promote_pending(tmp_path / "state")
    assert load_or_create(tmp_path / "state") == (new_private, new_public)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and not (tmp_path / "state" / PENDING_KEY_FILE).exists()


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    os.chmod(tmp_path / PRIVATE_KEY_FILE, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create(tmp_path)


def test_spool_replays_in_order_and_drops_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=10_000, max_age_s=100)
    for seq in (3, 1, 2, 10):
        spool.put(seq, {"seq": seq, "peers": []}, now=1000.0)
    assert [s for s, _ in spool] == [1, 2, 3, 10]
    spool.done(1)
    assert [s for s, _ in spool] == [2, 3, 10]
    for seq in range(11, 200):
        spool.put(seq, {"seq": seq, "peers": ["x" * 50]}, now=1000.0)
    assert sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.json")) <= 10_000
    kept = [s for s, _ in spool]
    assert kept == sorted(kept) and kept[-1] == 199 and spool.dropped > 0 and 2 not in kept
    spool.trim(now=1000.0 + 101)
    assert len(spool) == 0
