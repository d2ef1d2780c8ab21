"""`meshctl node drain|undrain NODE`: one node out of (and back into) service.

A drained node takes no new sessions (placement leaves it out) and relays nothing; its agent
learns it by long poll, answers 503 on its /healthz and runs its `--on-drain` hook. NODE is a
node id (`n-...`) or a node's name (as `meshctl nodes list` shows it; it must be unique).
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meshctl.cli.common import EXIT_INVALID, EXIT_NOT_FOUND, emit, progress, state

if TYPE_CHECKING:
    from meshctl.client import JsonClient

node_app = typer.Typer(help="One node: drain, undrain.", no_args_is_help=True, rich_markup_mode=None)
NODE_ID = re.compile(r"^n-[0-9a-f]{16}$")


def resolve_node(client: JsonClient, node: str) -> str:
    """A node id from an id or a unique name; one line on stderr and exit 6 (none) or 7 (several)."""
    if NODE_ID.match(node):
        return node
    found = [n["id"] for n in client.nodes() if node in (n["name"], n["id"])]
    if len(found) == 1:
        return found[0]
    if not found:
        sys.stderr.write(f"error: no node with the id or name {node!r} (see `meshctl nodes list`)\n")
        raise typer.Exit(EXIT_NOT_FOUND)
    sys.stderr.write(f"error: {len(found)} nodes are named {node!r}: give the id ({', '.join(sorted(found))})\n")
    raise typer.Exit(EXIT_INVALID)


def _node_row(n: dict[str, Any]) -> Any:
    from meshctl.cli import output

    drain = n.get("drain") or {}
    st = "drained" if n.get("drained") else "active"
    why = drain.get("reason") or ("its region is drained" if n.get("drained_by") == "region" else None)
    return output.table(
        None,
        ["node", "name", "region", "state", "reason"],
        [[n["id"], n["name"], n["region"], output.state_text(st), why]],
    )


def _preview(p: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.text import Text

    from meshctl.cli import output

    parts: list[Any] = [Text(f"dry run: {p['summary']} (nothing changed)", style="bold")]
    if p["placements_changed"]:
        parts.append(
            output.table(
                "placements that would go elsewhere",
                ["clients near", "now", "after"],
                [[c["near"], c["before"] or "-", c["after"] or "none"] for c in p["placements_changed"]],
            )
        )
    return Group(*parts)


@node_app.command("drain")
def drain(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="Node id (n-...) or name.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the drain, in events, in the hook's env).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")] = False,
) -> None:
    """No new sessions and no relaying on one node.

    Example: meshctl node drain media-7 --reason "kernel update" --dry-run
    """
    client = state(ctx).client()
    node_id = resolve_node(client, node)
    with progress(f"draining {node}"):
        result = client.drain_node_preview(node_id, reason) if dry_run else client.drain_node(node_id, reason)
    emit(ctx, result, _preview if dry_run else _node_row)


@node_app.command("undrain")
def undrain(ctx: typer.Context, node: Annotated[str, typer.Argument(help="Node id (n-...) or name.")]) -> None:
    """Lift a node's drain.  Example: meshctl node undrain media-7"""
    client = state(ctx).client()
    node_id = resolve_node(client, node)
    with progress(f"undraining {node}"):
        result = client.undrain_node(node_id)
    emit(ctx, result, _node_row)
