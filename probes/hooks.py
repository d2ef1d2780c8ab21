"""`--on-drain CMD` / `--on-undrain CMD`: run once per transition of the node's drain state.

So a media server can stop taking rooms when its node or region is drained, and take them again
after. A command runs once when the node becomes drained (also at start, when the node is
already drained) and once when it becomes active again; never at every poll, nor when only the
reason changes. Transitions run one after the other, in order.

The command is split like a shell would (`shlex.split`) and run directly, not through a shell:
give `sh -c '...'` for one. Its environment is the agent's plus
`MESH_DRAIN_STATE` (drained | active), `MESH_DRAIN_REASON`, `MESH_DRAIN_SCOPE` (node | region),
`MESH_DRAIN_SINCE` and `MESH_NODE_ID`, `MESH_REGION`. Its output is logged line by line; it is
killed after the timeout (default 30 s); a failure (exit status, timeout, not found) is logged
and the agent goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex

from probes.health import DrainState

log = logging.getLogger("meshctl.agent")
DEFAULT_HOOK_TIMEOUT_S = 30.0


class Hooks:
    """Follows the drain state; runs the matching command on each transition, in a task of its own."""

    def __init__(
        self,
        on_drain: str | None,
        on_undrain: str | None,
        timeout_s: float = DEFAULT_HOOK_TIMEOUT_S,
    ) -> None:
        self.on_drain = shlex.split(on_drain) if on_drain else None
        self.on_undrain = shlex.split(on_undrain) if on_undrain else None
        self.timeout_s = timeout_s
        self.node_id = ""
        self.region = ""
        self._drained = False  # the state the last transition ran for (a node starts active)
        self._queue: asyncio.Queue[DrainState] = asyncio.Queue()
        self.runs: list[tuple[str, int | None]] = []  # (drain | undrain, exit status or None), for tests and logs

    def observe(self, state: DrainState) -> None:
        """The controller's latest word; queues a run when the drained/active state changed."""
        if state.drained == self._drained:
            return
        self._drained = state.drained
        self._queue.put_nowait(state)

    async def run(self) -> None:
        """Run queued transitions one at a time (a task for the agent's lifetime)."""
        while True:
            state = await self._queue.get()
            argv = self.on_drain if state.drained else self.on_undrain
            what = "drain" if state.drained else "undrain"
            if argv is None:
                continue
            status = await self._run_one(what, argv, state)
            self.runs.append((what, status))

    async def _run_one(self, what: str, argv: list[str], state: DrainState) -> int | None:
        env = dict(os.environ)
        env.update(
            MESH_DRAIN_STATE="drained" if state.drained else "active",
            MESH_DRAIN_REASON=state.reason or "",
            MESH_DRAIN_SCOPE=state.scope or "",
            MESH_DRAIN_SINCE=state.since or "",
            MESH_NODE_ID=self.node_id,
            MESH_REGION=self.region,
        )
        log.info("on-%s hook: running %s (%s)", what, shlex.join(argv), state.reason or "no reason given")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("on-%s hook: cannot run %s: %s", what, argv[0], exc.strerror or exc)
            return None
        assert proc.stdout is not None
        out = proc.stdout

        async def relay() -> None:
            async for line in out:
                log.info("on-%s hook: %s", what, line.decode(errors="replace").rstrip())

        try:
            await asyncio.wait_for(asyncio.gather(relay(), proc.wait()), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            log.error("on-%s hook: killed after %g s", what, self.timeout_s)
            return None
        if proc.returncode != 0:
            log.error("on-%s hook: exited with status %d", what, proc.returncode)
        else:
            log.info("on-%s hook: done", what)
        return proc.returncode
