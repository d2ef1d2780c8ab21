"""Report windows waiting for the controller: a FIFO on disk, bounded by bytes and age.

One file per window (`<seq>.json`, written with `meshctl.files.atomic_write`: durable, and whole
or absent after a kill); replay in sequence order; when over a bound the oldest are dropped first
and counted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshctl.files import atomic_write, remove_temps


class Spool:
    def __init__(self, directory: Path, max_bytes: int = 64 * 1024 * 1024, max_age_s: float = 3600.0) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_temps(self.dir)  # left by a kill before a rename; one agent owns its spool
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.dropped = 0

    def _files(self) -> list[Path]:
        return sorted(self.dir.glob("*.json"), key=lambda p: int(p.stem))

    def put(self, seq: int, report: dict[str, Any], now: float | None = None) -> None:
        body = json.dumps({"spooled_at": now if now is not None else time.time(), "report": report})
        atomic_write(self.dir / f"{seq}.json", body, mode=0o600)
        self.trim(now)

    def trim(self, now: float | None = None) -> int:
        """Drop the oldest windows beyond the size or age bound; returns how many went."""
        now = time.time() if now is None else now
        files = self._files()
        sizes = {p: p.stat().st_size for p in files}
        total = sum(sizes.values())
        gone = 0
        for p in files:
            try:
                too_old = now - json.loads(p.read_text())["spooled_at"] > self.max_age_s
            except (OSError, ValueError, KeyError, TypeError):
                too_old = True  # unreadable (written before writes were durable): it can never be sent
            if not too_old and total <= self.max_bytes:
                break
            total -= sizes[p]
            p.unlink(missing_ok=True)
            gone += 1
        self.dropped += gone
        return gone

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Oldest first."""
        for p in self._files():
            try:
                yield int(p.stem), json.loads(p.read_text())["report"]
            except (OSError, ValueError):
                continue

    def done(self, seq: int) -> None:
        (self.dir / f"{seq}.json").unlink(missing_ok=True)

    def highest_seq(self) -> int | None:
        """The newest window's seq, or None when the spool is empty."""
        files = self._files()
        return int(files[-1].stem) if files else None

    def __len__(self) -> int:
        return len(self._files())
