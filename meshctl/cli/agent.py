"""`meshctl agent ...`: hands every argument to the agent's own command line (`probes.cli`).

The agent owns its flags, help and errors (`meshctl-agent` on a node, without Typer or Rich);
this group only forwards, so `meshctl agent run --help` is the agent's help and both commands
behave the same. probes is imported only when the command runs.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

HELP = "The node agent: join, WireGuard tunnel, STAMP probes, reports."


class _PassThrough(TyperGroup):
    """A group with no commands of its own: everything after `agent` goes to `probes.cli.main`.

    (`ctx` is Typer's vendored click Context, which Typer does not export: typed Any.)
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.args = list(args)
        return []

    def invoke(self, ctx: Any) -> Any:
        from probes.cli import main

        if not ctx.args:  # as before: no sub-command shows the help and is a usage error
            main(["--help"], prog=ctx.command_path)
            raise typer.Exit(2)
        code = main(ctx.args, prog=ctx.command_path)
        if code:
            raise typer.Exit(code)
        return None


agent_app = typer.Typer(
    cls=_PassThrough,
    help=HELP,
    add_help_option=False,
    rich_markup_mode=None,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)


@agent_app.callback(invoke_without_command=True)
def _agent() -> None:
    """The node agent: join, WireGuard tunnel, STAMP probes, reports."""
