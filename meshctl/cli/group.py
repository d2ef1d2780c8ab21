"""The root command group: sub-apps loaded when used, and `-o/--output` on every command.

Two habits of a CLI people run dozens of times in an incident:

- Start-up: `meshctl lab ...`, `meshctl stack ...` and `meshctl agent ...` live in modules
  that pull in the lab, Pulumi or the agent. They are listed in `meshctl --help` from the table
  below and imported only when their name is the command being run.
- `-o json` where kubectl users type it: after the sub-command (`meshctl regions list -o json`)
  as well as before it (`meshctl -o json regions list`). One option object is added to every
  leaf command when the root resolves it; its callback sets the same `State.output` the global
  option sets, later, so the sub-command's value wins.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from meshctl.cli.common import Output, State

#: name -> (module, attribute holding the typer.Typer, one line of help for `meshctl --help`)
LAZY: dict[str, tuple[str, str, str]] = {
    "agent": ("meshctl.cli.agent", "agent_app", "The node agent: join, WireGuard tunnel, STAMP probes, reports."),
    "stack": ("meshctl.cli.stack", "stack_app", "Provision media nodes with Pulumi (preview, up, destroy, outputs)."),
    "lab": (
        "meshctl.cli.lab",
        "lab_app",
        "meshlab: real WireGuard nodes in network namespaces, a WAN with measured cloud RTTs (needs root).",
    ),
}

OUTPUT_HELP = "table, json or yaml (also accepted before the command; this one wins)."


def _set_output(ctx: typer.Context, value: Output | None) -> Output | None:
    root = ctx.find_root().obj
    if value is not None and isinstance(root, State):
        root.output = Output(value)
    return value


def _output_option() -> Any:
    """The click parameter typer builds for `-o/--output` (made once, through typer's own API)."""
    probe = typer.Typer(add_completion=False)

    @probe.command()
    def _probe(
        output: Annotated[
            Output | None,
            typer.Option("-o", "--output", help=OUTPUT_HELP, callback=_set_output, expose_value=False),
        ] = None,
    ) -> None:
        """Never run: only its parameter is used."""

    (param,) = typer.main.get_command(probe).params
    return param


_OUTPUT: Any = None


def add_output_option(command: Any) -> Any:
    """`command` and every command under it, each leaf with `-o/--output` (once)."""
    global _OUTPUT
    subcommands = getattr(command, "commands", None)
    if isinstance(subcommands, dict):
        for sub in subcommands.values():
            add_output_option(sub)
        return command
    if not any("--output" in getattr(p, "opts", ()) for p in command.params):
        if _OUTPUT is None:
            _OUTPUT = _output_option()
        command.params.append(_OUTPUT)
    return command


class RootGroup(TyperGroup):
    """`meshctl` itself: the eager commands, the lazy sub-apps of `LAZY`, `-o` on every leaf."""

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY})

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in LAZY:
            cmd = self._load(cmd_name)
        return None if cmd is None else add_output_option(cmd)

    def _load(self, name: str) -> Any:
        module_name, attr, _ = LAZY[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a trimmed install without that part: no such command
            if exc.name != module_name:
                raise
            return None
        cmd = typer.main.get_command(getattr(module, attr))
        cmd.name = name
        self.commands[name] = cmd
        return cmd

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """As typer's, but the lazy sub-apps are described from `LAZY` without importing them."""
        rows: list[tuple[str, str]] = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        for name in names:
            cmd = self.commands.get(name)
            if cmd is not None:
                if not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit)))
            elif name in LAZY:
                text = LAZY[name][2]
                rows.append((name, text if len(text) <= limit else text[: max(limit - 3, 0)].rstrip() + "..."))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
