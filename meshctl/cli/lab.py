"""`meshctl lab ...`: a real WireGuard mesh in network namespaces on this machine (root).

The lab's controller becomes the current `meshctl` context, so every other command works
against it from the host shell: `meshctl status`, `meshctl matrix`, `meshctl route A B --explain`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from meshctl.cli import output
from meshctl.cli.common import emit, message
from meshctl.client import MeshError

if TYPE_CHECKING:
    from meshctl.lab import lab

lab_app = typer.Typer(
    help="meshlab: real WireGuard nodes in network namespaces, a WAN with measured cloud RTTs (needs root).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

KIND_HELP = "blackhole, loss PCT or delay MS (MS is added to the round trip)"


def _dir(ctx: typer.Context) -> Path | None:
    value = ctx.meta.get("lab_dir")
    return Path(value) if value else None


def _err() -> Console:
    return output.console(stderr=True)


@contextlib.contextmanager
def guard() -> Iterator[ModuleType]:
    """The lab module (imported here, so `meshctl --help` does not pay for it); its failures
    become one line on stderr and an exit code, like every meshctl failure."""
    from meshctl.lab import lab
    from meshctl.lab.topology import TopologyError

    try:
        yield lab
    except TopologyError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(7) from None
    except lab.LabError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(3 if str(exc).startswith("missing:") else 1) from None


class Steps:
    """Progress for long work: each step on stderr with the time since the start."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        _err().print(f"[dim][{time.monotonic() - self.t0:5.1f}s][/dim] {message}", highlight=False)


@lab_app.callback()
def lab_options(
    ctx: typer.Context,
    lab_dir: Annotated[
        Path | None,
        typer.Option("--dir", envvar="MESH_LAB_DIR", help="Where the lab keeps its state and logs."),
    ] = None,
) -> None:
    ctx.meta["lab_dir"] = str(lab_dir) if lab_dir else None


@lab_app.command("up")
def up(
    ctx: typer.Context,
    topology: Annotated[
        Path | None, typer.Option("--topology", help="A topology YAML file (default: 9 regions, 3 clouds).")
    ] = None,
    prefix: Annotated[str, typer.Option(envvar="MESH_LAB_PREFIX", help="Name prefix of namespaces/links.")] = "mlab",
    net: Annotated[str, typer.Option(envvar="MESH_LAB_NET", help="The lab's /16, as two octets.")] = "10.213",
    steady_timeout: Annotated[
        float,
        typer.Option(
            "--steady-timeout",
            min=0,
            help="Seconds to wait for every link to be within max(1 ms, 3%) of the topology (0: do not wait).",
        ),
    ] = 60.0,
) -> None:
    """Bring the lab up (or restart what died in it) and make it the current context.

    A new lab is handed over once every link measures what the topology says (or, after
    --steady-timeout, with a word that they are still settling).

    Example: sudo meshctl lab up && meshctl status
    """
    with guard() as lab:
        st = lab.up(topology, _dir(ctx), prefix=prefix, net=net, say=Steps(), steady_timeout=steady_timeout)
    emit(ctx, _summary(st), _up_view)


def _up_view(data: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.text import Text

    nodes = data["nodes"]
    rows = [[n["name"], n["region"], n["namespace"], n["wan_ip"]] for n in nodes]
    hint = (
        f"controller {data['controller']} is the current meshctl context 'lab'. Try:\n"
        "  meshctl status; meshctl matrix; meshctl routes\n"
        f"  meshctl lab fault {nodes[0]['region']} blackhole; meshctl events -f; meshctl lab heal\n"
        "  meshctl lab down"
    )
    return Group(output.table(f"meshlab: {len(nodes)} nodes", ["node", "region", "namespace", "wan"], rows), Text(hint))


def _summary(st: lab.LabState) -> dict[str, Any]:
    return {
        "dir": st.dir,
        "controller": st.url,
        "nodes": [{"name": n.name, "region": n.region, "namespace": n.ns, "wan_ip": n.wan_ip} for n in st.nodes],
    }


@lab_app.command("status")
def status(ctx: typer.Context) -> None:
    """Processes, faults and every node as the controller sees it.  Example: meshctl lab status"""
    with guard() as lab:
        data = lab.status(lab.require(_dir(ctx)))
    emit(ctx, data, _status_view)


def _status_view(data: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.text import Text

    ctl, router = data["controller"], data["router"]

    def running(ok: bool) -> Text:
        return Text("running", style="green") if ok else Text("DEAD", style="bold red")

    head = Text.assemble(
        "controller ",
        ctl["url"],
        " ",
        running(ctl["running"]),
        "   router ",
        running(router["running"]),
        f"  {router.get('forwarded', '?')} packets forwarded, {router.get('dropped', '?')} dropped",
    )
    faults = [f"{f['target']}: {f['what']}" for f in data["faults"]]
    if data["controller_cut"]:
        faults.append("controller cut off from every agent")
    fault_line = Text("faults: " + ("; ".join(faults) if faults else "none"), style="yellow" if faults else "")
    rows = [
        [
            n["name"],
            n["region"],
            n["wan_ip"],
            n["overlay_ip"] or "-",
            running(n["agent_running"]),
            output.state_text("active") if n["up"] else output.state_text("drained"),
            n["reports_accepted"] if n["reports_accepted"] is not None else "-",
            output.ago(n["last_report_at"]),
        ]
        for n in data["nodes"]
    ]
    table = output.table(
        None, ["node", "region", "wan", "overlay", "agent", "reporting", "reports", "last report"], rows
    )
    return Group(head, fault_line, table)


@lab_app.command(
    "exec",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False},
)
def exec_(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="A lab node (its name in `meshctl lab status`) or a region.")],
    command: Annotated[list[str] | None, typer.Argument(help="The command and its arguments, after --.")] = None,
) -> None:
    """Run a command in a lab node's network namespace (root): its stdin, output and exit code are the command's.

    A region stands for its first node. Examples:

    \b
      sudo meshctl lab exec aws-us-east-1-1 -- ip -br addr
      sudo meshctl lab exec aws:eu-west-2 -- ping -c3 100.96.0.2
      sudo meshctl lab exec gcp:us-east4 -- curl -s localhost:9901/healthz
    """
    import os

    with guard() as lab:
        words = [*(command or []), *ctx.args]
        if words[:1] == ["--"]:  # kept by click once options stop being parsed at the first argument
            words = words[1:]
        argv = lab.exec_argv(lab.require(_dir(ctx)), node, words)
        if os.geteuid() != 0:
            raise lab.LabError("entering a node's network namespace needs root: run it with sudo")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)  # the command replaces meshctl: stdio, signals and exit code are its own


@lab_app.command("down")
def down(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Option(envvar="MESH_LAB_PREFIX", help="Used when `up` died early.")] = "mlab",
    net: Annotated[str, typer.Option(envvar="MESH_LAB_NET", help="Used when `up` died early.")] = "10.213",
) -> None:
    """Stop and remove everything the lab made (also after a failed or killed `up`).

    Example: sudo meshctl lab down
    """
    with guard() as lab:
        lab.preflight()
        left = lab.down(_dir(ctx), prefix, net, say=Steps())
    if left:
        raise typer.Exit(1)


def _fault_value(kind: str, value: float | None) -> tuple[str, float | None]:
    from meshctl.lab.wanrouter import FAULT_KINDS  # the one list of fault kinds: the router's

    if kind not in FAULT_KINDS:
        raise typer.BadParameter(f"{kind!r}: give {KIND_HELP}", param_hint="KIND")
    if kind != "blackhole" and value is None:
        raise typer.BadParameter(f"{kind} needs a value: {KIND_HELP}", param_hint="VALUE")
    return kind, value


@lab_app.command("fault")
def fault(
    ctx: typer.Context,
    region: Annotated[str, typer.Argument(help="A region of the lab.")],
    kind: Annotated[str, typer.Argument(help=KIND_HELP)],
    value: Annotated[float | None, typer.Argument(help="Percent for loss, milliseconds for delay.")] = None,
) -> None:
    """Break a region: every path to and from it (a blackhole also cuts its reports).

    Example: meshctl lab fault aws:us-east-1 blackhole; meshctl lab fault gcp:us-east4 loss 30
    """
    kind, value = _fault_value(kind, value)
    with guard() as lab:
        answer = lab.fault(lab.require(_dir(ctx)), region, kind, value)
    _faults_out(ctx, answer)


@lab_app.command("fault-link")
def fault_link(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="One region.")],
    b: Annotated[str, typer.Argument(help="The other region.")],
    kind: Annotated[str, typer.Argument(help=KIND_HELP)],
    value: Annotated[float | None, typer.Argument(help="Percent for loss, milliseconds for delay.")] = None,
) -> None:
    """Break the paths between two regions, both ways.

    Example: meshctl lab fault-link aws:us-east-1 aws:eu-west-2 delay 100
    """
    kind, value = _fault_value(kind, value)
    with guard() as lab:
        answer = lab.fault_link(lab.require(_dir(ctx)), a, b, kind, value)
    _faults_out(ctx, answer)


@lab_app.command("fault-controller")
def fault_controller(ctx: typer.Context) -> None:
    """Cut the controller off from every agent; the mesh keeps forwarding, the controller fails static.

    Example: meshctl lab fault-controller; meshctl status; meshctl lab heal
    """
    with guard() as lab:
        applied_at = lab.fault_controller(lab.require(_dir(ctx)))
    emit(
        ctx,
        {"controller_cut": True, "applied_at": applied_at},
        lambda _: "the controller is cut off from every agent (`meshctl lab heal` restores it)",
    )


@lab_app.command("heal")
def heal(
    ctx: typer.Context,
    region: Annotated[str | None, typer.Argument(help="Only this region's fault (default: every fault).")] = None,
) -> None:
    """Lift faults.  Example: meshctl lab heal"""
    with guard() as lab:
        answer = lab.heal(lab.require(_dir(ctx)), region)
    _faults_out(ctx, answer)


def _faults_out(ctx: typer.Context, answer: dict[str, Any]) -> None:
    """The faults now in force; with -o json also when the change took effect (`applied_at`)."""

    def render(a: dict[str, Any]) -> str:
        return "faults in force: " + ("; ".join(f"{f['target']}: {f['what']}" for f in a["faults"]) or "none")

    emit(ctx, {k: v for k, v in answer.items() if k != "ok"}, render)


@lab_app.command("demo")
def demo(
    ctx: typer.Context,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the lab running afterwards, to explore.")] = False,
    topology: Annotated[Path | None, typer.Option("--topology", help="A topology YAML file.")] = None,
) -> None:
    """The mesh measures itself, routes through relays where faster, drains a dead region.

    Up, converge, status, matrix, routes; blackhole a region and watch it drain; heal it and
    watch it come back; tear down (unless --keep).  Example: sudo meshctl lab demo --keep
    """
    from meshctl.cli.demo import run

    with guard() as lab:
        try:
            run(_dir(ctx), topology, keep, say=Steps(), console=output.console())
        except MeshError as exc:
            raise lab.LabError(f"the lab's controller: {message(exc)}") from exc


@lab_app.command("simulate")
def simulate(
    ctx: typer.Context,
    regions: Annotated[int, typer.Option("--regions", help="Regions (the Skyplane table's, then copies).")] = 10,
    nodes_per_region: Annotated[int, typer.Option("--nodes-per-region", help="Synthetic agents per region.")] = 3,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of reporting, after the joins.")] = 30.0,
    window: Annotated[float, typer.Option("--window", help="Seconds per window.")] = 5.0,
    k: Annotated[int, typer.Option("-k", help="Nodes probed per other region.")] = 2,
    join_rate: Annotated[float, typer.Option("--join-rate", help="Joins/s (0: as fast as taken).")] = 0.0,
    fault: Annotated[
        list[str] | None, typer.Option("--fault", help="dark:REGION@T or lossy:A/B@T (region id or index).")
    ] = None,
    database_url: Annotated[str | None, typer.Option("--database-url", help="Default: SQLite in a tmp dir.")] = None,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="Controllers on one PostgreSQL store (--database-url).")
    ] = 1,
) -> None:
    """A real controller and N regions x M synthetic agents (no namespaces, no root): live figures per window.

    Example: meshctl lab simulate --regions 20 --nodes-per-region 5 --duration 30 --fault dark:3@10
    """
    from meshctl.lab.simulate import SimConfig, SimError, Tick, summary
    from meshctl.lab.simulate import simulate as run

    err, steps = _err(), Steps()

    def tick(t: Tick) -> None:
        err.print(
            f"[dim]t={t.t_s:5.1f}s[/dim] {t.reports_per_s:7.1f} reports/s  p99 {t.report_p99_ms:7.1f} ms  "
            f"controller CPU {t.controller_cpu_percent:5.1f}%  acked {t.acknowledged}  "
            f"drained: {', '.join(t.drained) or '-'}",
            highlight=False,
        )

    cfg = SimConfig(
        regions=regions,
        nodes_per_region=nodes_per_region,
        duration_s=duration,
        window_s=window,
        k=k,
        join_rate=join_rate,
        faults=fault or [],
        database_url=database_url,
        replicas=replicas,
    )
    try:
        result = run(cfg, on_tick=tick, say=steps)
    except SimError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(1) from None
    emit(ctx, result, lambda r: "\n".join(summary(r)))
