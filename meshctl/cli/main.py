"""meshctl: see and steer the mesh. Every command is a call to the controller's REST API.

Exit codes: 0 ok; 1 error; 2 usage; 3 a tool it needs is missing (pulumi); 4 controller
unreachable; 5 token missing, refused or without the scope; 6 not found; 7 invalid input or
conflict; 130 interrupted.

Start-up is kept short (see `group`): importing this module loads Typer and nothing heavy; the
client (httpx, pydantic), Rich, PyYAML and the lab/stack/agent sub-apps are imported by the
commands that use them.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meshctl.cli import output
from meshctl.cli.access import config_app, join_app, policies_app, tokens_app
from meshctl.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Output,
    State,
    emit,
    exit_code,
    message,
    out,
    progress,
    secret_from_file,
    state,
    to_data,
)
from meshctl.cli.group import OUTPUT_HELP, RootGroup, _set_output
from meshctl.cli.node import node_app

if TYPE_CHECKING:
    from meshctl.client import JsonClient

EPILOG = (
    "Exit codes: 0 ok, 1 error, 2 usage, 3 missing tool (pulumi), 4 controller unreachable, "
    "5 auth (401/403), 6 not found, 7 invalid input or conflict, 130 interrupted."
)

app = typer.Typer(
    cls=RootGroup,
    name="meshctl",
    help="See and steer a multi-cloud media mesh (a client of the controller's REST API).",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
regions_app = typer.Typer(help="Regions: list, show, add.", no_args_is_help=True, rich_markup_mode=None)
nodes_app = typer.Typer(help="Nodes: list, show, remove.", no_args_is_help=True, rich_markup_mode=None)
overlay_app = typer.Typer(help="WireGuard overlay helpers.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(regions_app, name="regions")
app.add_typer(nodes_app, name="nodes")
app.add_typer(node_app, name="node")
app.add_typer(tokens_app, name="tokens")
app.add_typer(join_app, name="join-tokens")
app.add_typer(policies_app, name="join-policies")
app.add_typer(overlay_app, name="overlay")
app.add_typer(config_app, name="config")


@app.callback()
def main_options(
    ctx: typer.Context,
    controller: Annotated[
        str | None, typer.Option("--controller", help="Controller URL (env MESHCTL_CONTROLLER).")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="Bearer token (shows in `ps`: use --token-file).")
    ] = None,
    token_file: Annotated[str | None, typer.Option(help="Bearer token file, 0600 (env MESHCTL_TOKEN_FILE).")] = None,
    context: Annotated[str | None, typer.Option("--context", help="Named context from the config file.")] = None,
    out_format: Annotated[
        Output, typer.Option("-o", "--output", help="table, json or yaml (also accepted after the command).")
    ] = Output.table,
) -> None:
    token_file = token_file or os.environ.get("MESHCTL_TOKEN_FILE")
    if token is None and token_file:
        token = secret_from_file(token_file)
    ctx.obj = State(controller, token, context, out_format)


# --- the controller itself ------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (env MESH_HOST, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env MESH_PORT, default 8080).")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="sqlite:///PATH or postgresql://... (env MESH_DATABASE_URL).")
    ] = None,
    replica_id: Annotated[str | None, typer.Option(help="This replica's name (env MESH_REPLICA_ID).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning.")] = "info",
) -> None:
    """Start the controller (the REST API, the recompute and drain loop).

    Example: meshctl serve --host 0.0.0.0 --port 8080 --database-url sqlite:///var/lib/meshctl/c.db
    """
    from meshctl.server import serve as run

    run(host=host, port=port, database_url=database_url, replica_id=replica_id, log_level=log_level)


# --- status, regions, nodes ----------------------------------------------------------------


@app.command()
def status(ctx: typer.Context) -> None:
    """The mesh on one screen: drained regions first, nodes, route generation, alerts.

    Example: meshctl status
    """
    emit(ctx, state(ctx).client().status(), output.status_view)


@regions_app.command("list")
def regions_list(ctx: typer.Context) -> None:
    """All regions with state and nodes.  Example: meshctl regions list -o json"""

    def render(rows: list[dict[str, Any]]) -> Any:
        return output.table(
            None,
            ["region", "state", "nodes", "metro", "reason"],
            [
                [
                    r["id"],
                    output.state_text(r["state"]),
                    f"{r['nodes_up']}/{r['nodes_total']}",
                    r.get("metro"),
                    (r.get("drain") or {}).get("reason"),
                ]
                for r in rows
            ],
        )

    emit(ctx, state(ctx).client().regions(), render)


@regions_app.command("show")
def regions_show(ctx: typer.Context, region: str) -> None:
    """One region in full.  Example: meshctl regions show aws:us-east-1"""
    emit(ctx, state(ctx).client().region(region))


@regions_app.command("add")
def regions_add(
    ctx: typer.Context,
    region: str,
    lat: Annotated[float | None, typer.Option(help="Latitude (default: from the built-in catalogue).")] = None,
    lon: Annotated[float | None, typer.Option(help="Longitude.")] = None,
    name: Annotated[str | None, typer.Option(help="Human name.")] = None,
    metro: Annotated[str | None, typer.Option(help="Metro shared across clouds, e.g. ashburn.")] = None,
) -> None:
    """Add or update a region.  Example: meshctl regions add gcp:europe-west1 (known regions fill in themselves)"""
    from meshctl.core.catalog import lookup

    known = lookup(region)
    if (lat is None or lon is None) and known is None:
        raise typer.BadParameter(f"{region} is not in the built-in catalogue: give --lat and --lon", param_hint="--lat")
    region_out = (
        state(ctx)
        .client()
        .put_region(
            region,
            lat=lat if lat is not None else known.lat,  # type: ignore[union-attr]
            lon=lon if lon is not None else known.lon,  # type: ignore[union-attr]
            name=name or (known.name if known else None),
            metro=metro or (known.metro if known else None),
        )
    )
    emit(ctx, region_out)


@nodes_app.command("list")
def nodes_list(ctx: typer.Context) -> None:
    """All nodes.  Example: meshctl nodes list"""

    def render(rows: list[dict[str, Any]]) -> Any:
        return output.table(
            None,
            ["node", "name", "region", "overlay", "up", "last report"],
            [
                [
                    n["id"],
                    n["name"],
                    n["region"],
                    n["overlay_ip"],
                    output.state_text("active") if n["up"] else output.state_text("drained"),
                    output.ago(n["last_report_at"]),
                ]
                for n in rows
            ],
        )

    emit(ctx, state(ctx).client().nodes(), render)


@nodes_app.command("show")
def nodes_show(ctx: typer.Context, node: str) -> None:
    """One node.  Example: meshctl nodes show n-1a2b3c4d5e6f7a8b"""
    emit(ctx, state(ctx).client().node(node))


@nodes_app.command("remove")
def nodes_remove(ctx: typer.Context, node: str) -> None:
    """Remove a node from the mesh (its peers drop it).  Example: meshctl nodes remove n-1a2b..."""
    emit(ctx, state(ctx).client().remove_node(node))


# --- links, routes, placement --------------------------------------------------------------


links_app = typer.Typer(
    help="Every measured region link; `links history SRC DST` for one link over time.", rich_markup_mode=None
)
app.add_typer(links_app, name="links")


@links_app.callback(invoke_without_command=True)
def links(
    ctx: typer.Context,
    _output: Annotated[
        Output | None,
        typer.Option("-o", "--output", help=OUTPUT_HELP, callback=_set_output, expose_value=False),
    ] = None,
) -> None:
    """Every measured region link (p50/p90 RTT, jitter, loss, age).  Example: meshctl links -o json

    `meshctl links history SRC DST` shows one link over time.
    """
    if ctx.invoked_subcommand is not None:
        return

    def render(data: dict[str, Any]) -> Any:
        return output.table(
            None,
            ["from", "to", "p50", "p90", "jitter", "loss%", "age"],
            [
                [
                    x["src"],
                    x["dst"],
                    x["rtt_p50_ms"],
                    x["rtt_p90_ms"],
                    x["jitter_ms"],
                    x["loss_percent"],
                    f"{x['age_s']:.0f}s",
                ]
                for x in data["links"]
            ],
        )

    emit(ctx, state(ctx).client().links(), render)


@links_app.command("history")
def links_history(
    ctx: typer.Context,
    src: str,
    dst: str,
    since: Annotated[str, typer.Option(help="A duration back from now (15m, 24h, 7d) or an ISO time.")] = "24h",
    step: Annotated[str, typer.Option(help="Bucket size: 1m (kept a day), 1h (kept 30 days) or auto.")] = "auto",
) -> None:
    """One link over time: RTT p50/p90, loss and jitter, with a sparkline of each.

    Example: meshctl links history aws:ap-northeast-1 aws:us-east-1 --since 7d
    """
    emit(ctx, state(ctx).client().link_history(src, dst, since=since, step=step), output.history_view)


@app.command()
def matrix(ctx: typer.Context) -> None:
    """The region latency matrix, coloured by RTT and loss, grouped by cloud, paged to 80 columns.

    Example: meshctl matrix
    """
    client = state(ctx).client()
    data = client.links()
    regions = [r["id"] for r in client.regions()]
    emit(ctx, data, lambda d: output.matrix_view(d["links"], regions, width=out().width))


@app.command()
def route(
    ctx: typer.Context,
    src: str,
    dst: str,
    explain: Annotated[bool, typer.Option("--explain", help="Show the candidates and why this path.")] = False,
) -> None:
    """The path between two regions.  Example: meshctl route aws:us-east-1 gcp:asia-southeast1 --explain"""
    client = state(ctx).client()
    emit(ctx, client.explain(src, dst) if explain else client.fetch_route(src, dst), output.explain_view)


@app.command()
def routes(ctx: typer.Context) -> None:
    """The whole route table.  Example: meshctl routes -o json"""

    def render(data: dict[str, Any]) -> Any:
        rows = [
            [
                r["src"],
                r["dst"],
                " -> ".join(r["path"]) if r["reachable"] else "unreachable",
                "-" if r["rtt_ms"] is None else f"{r['rtt_ms']:.1f}",
            ]
            for r in data["routes"]
        ]
        return output.table(f"generation {data['generation']}", ["from", "to", "path", "rtt ms"], rows)

    emit(ctx, state(ctx).client().route_table(), render)


@app.command()
def placement(
    ctx: typer.Context,
    near: Annotated[str | None, typer.Option(help="A region id the client is near.")] = None,
    lat: Annotated[float | None, typer.Option(help="Client latitude.")] = None,
    lon: Annotated[float | None, typer.Option(help="Client longitude.")] = None,
) -> None:
    """Where a new session should go.  Example: meshctl placement --near aws:us-east-1"""
    if near is None and (lat is None or lon is None):
        raise typer.BadParameter("give --near REGION, or both --lat and --lon", param_hint="--near")

    def render(p: dict[str, Any]) -> Any:
        return output.table(
            f"{p['region']}: {p['reason']}",
            ["alternative", "state", "rtt ms", "km"],
            [[a["region"], output.state_text(a["state"]), a["rtt_ms"], a["distance_km"]] for a in p["alternatives"]],
        )

    emit(ctx, state(ctx).client().placement(near, lat, lon), render)


# --- drains --------------------------------------------------------------------------------


@app.command()
def drain(
    ctx: typer.Context,
    region: str,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the drain and in events).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")] = False,
) -> None:
    """Stop new sessions and transit in a region.

    Example: meshctl drain aws:us-east-1 --reason "provider incident 1234" --dry-run
    """
    client = state(ctx).client()
    with progress(f"draining {region}"):
        result = client.drain_preview(region, reason) if dry_run else client.drain(region, reason)
    if dry_run:
        emit(ctx, result, output.drain_preview_view)
    else:
        emit(
            ctx,
            result,
            lambda r: output.table(
                None,
                ["region", "state", "reason"],
                [[r["id"], output.state_text(r["state"]), (r.get("drain") or {}).get("reason")]],
            ),
        )


@app.command()
def undrain(ctx: typer.Context, region: str) -> None:
    """Lift a drain.  Example: meshctl undrain aws:us-east-1"""
    client = state(ctx).client()
    with progress(f"undraining {region}"):
        result = client.undrain(region)
    emit(ctx, result, lambda r: output.table(None, ["region", "state"], [[r["id"], output.state_text(r["state"])]]))


# --- events --------------------------------------------------------------------------------


def _event_row(e: dict[str, Any]) -> list[Any]:
    return [e["id"], e["ts"][11:19], e["kind"], e.get("region") or "", e["reason"]]


@app.command()
def events(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="An event id or an ISO time.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C to stop).")] = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
) -> None:
    """Drains, undrains, freezes, joins, route changes.  Example: meshctl events --since 2026-11-24T10:00:00Z -f"""
    st = state(ctx)
    client = st.client()
    rows = to_data(client.events(since=since, limit=limit))
    render = lambda r: output.table(None, ["id", "time", "kind", "region", "reason"], [_event_row(e) for e in r])  # noqa: E731
    if not follow:
        emit(ctx, rows, render)
        return
    for e in rows:
        _print_event(st, e)
    last = str(rows[-1]["id"]) if rows else str(_latest_event_id(client))
    try:
        while True:
            with progress("waiting for events (Ctrl-C to stop)"):
                new = to_data(client.events(since=last, limit=500, wait=25))
            for e in new:
                _print_event(st, e)
                last = str(e["id"])
    except KeyboardInterrupt:
        return  # Ctrl-C is how one stops following: a clean exit, status 0


def _latest_event_id(client: JsonClient) -> int:
    newest = client.events(limit=1)
    return int(newest[-1]["id"]) if newest else 0


def _print_event(st: State, e: dict[str, Any]) -> None:
    if st.output == Output.table:
        ident, clock, kind, region, reason = _event_row(e)
        out().print(f"{ident:>6} {clock} {kind:<12} {region:<22} {reason}", highlight=False)
    else:
        import json

        typer.echo(json.dumps(e) if st.output == Output.json else output.dump([e], "yaml"), nl=True)
    sys.stdout.flush()


# --- overlay -------------------------------------------------------------------------------


@overlay_app.command("render")
def overlay_render(
    ctx: typer.Context,
    node: str,
    listen_port: Annotated[int, typer.Option(help="The node's WireGuard port.")] = 51820,
) -> None:
    """A wg-quick file for a node; the private key stays a placeholder the node fills in.

    Example: meshctl overlay render n-1a2b3c4d5e6f7a8b > /etc/wireguard/mesh0.conf
    """
    from meshctl.core.wgconf import PeerConf, render_wg_quick

    client = state(ctx).client()
    me = client.node(node)
    peers = client.peers(node)
    prefix = peers["overlay_cidr"].split("/")[1]
    text = render_wg_quick(
        f"{me['overlay_ip']}/{prefix}",
        listen_port,
        [PeerConf(p["public_key"], p["endpoint"], p["allowed_ips"]) for p in peers["peers"]],
    )
    typer.echo(text, nl=False)


def main() -> None:
    """Entry point: one line on stderr and a documented exit code for every failure."""
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)  # typer.Exit(n) comes back as a return value outside standalone mode
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("\ninterrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: Typer's own message, exit 2
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            sys.stderr.write(f"error: {exc}\n")
        sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:
        # The client is imported by the first command that calls the API: an error of its
        # kind can only come after that, so there is nothing to import here first.
        client = sys.modules.get("meshctl.client")
        if client is not None and isinstance(exc, client.MeshError):
            _fail(message(exc), exit_code(exc))
        if client is not None and isinstance(exc, client.ConfigError):
            _fail(str(exc), EXIT_ERROR)
        raise


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
