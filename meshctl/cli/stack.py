"""`meshctl stack preview|up|destroy|outputs --stack NAME`: Pulumi's Automation API on stacks/.

Needs the pulumi CLI binary (the PyPI package is only the SDK). Where it is missing: one line
on how to install it and exit code 3. Without a backend configured, state goes to a local
file backend under ~/.meshctl/pulumi-state, for trying things out.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

PULUMI_MISSING = 3
INSTALL_HINT = (
    "the pulumi CLI is not installed (meshctl stack needs it): install it with "
    "`curl -fsSL https://get.pulumi.com | sh` (see https://www.pulumi.com/docs/install/) and retry"
)

stack_app = typer.Typer(help="Provision media nodes with Pulumi (preview, up, destroy, outputs).", no_args_is_help=True)

StackName = Annotated[str, typer.Option("--stack", help="Stack: <env>-<cloud>, e.g. dev-aws.")]
Backend = Annotated[
    str | None,
    typer.Option("--backend-url", help="Pulumi backend (default: $PULUMI_BACKEND_URL or a local file backend)."),
]


def stacks_dir() -> Path:
    """The Pulumi project: $MESHCTL_STACKS_DIR, else stacks/ of this checkout."""
    env = os.environ.get("MESHCTL_STACKS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "stacks"


def _backend(url: str | None) -> str:
    if url:
        return url
    if os.environ.get("PULUMI_BACKEND_URL"):
        return os.environ["PULUMI_BACKEND_URL"]
    state = Path.home() / ".meshctl" / "pulumi-state"
    state.mkdir(parents=True, exist_ok=True)
    return f"file://{state}"


def _stack(name: str, backend: str | None) -> Any:
    from pulumi import automation as auto

    env = {"PULUMI_BACKEND_URL": _backend(backend)}
    if "PULUMI_CONFIG_PASSPHRASE" not in os.environ and env["PULUMI_BACKEND_URL"].startswith("file://"):
        env["PULUMI_CONFIG_PASSPHRASE_FILE"] = os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE", "/dev/null")
    try:
        return auto.create_or_select_stack(
            stack_name=name, work_dir=str(stacks_dir()), opts=auto.LocalWorkspaceOptions(env_vars=env)
        )
    except FileNotFoundError as exc:
        if "pulumi" in str(exc):
            _missing()
        raise


def _missing() -> None:
    sys.stderr.write(f"error: {INSTALL_HINT}\n")
    raise typer.Exit(PULUMI_MISSING)


def _run(action: str, name: str, backend: str | None, **kw: Any) -> Any:
    from pulumi import automation as auto

    stack = _stack(name, backend)
    try:
        return getattr(stack, action)(on_output=lambda line: print(line, end="" if line.endswith("\n") else "\n"), **kw)
    except FileNotFoundError:
        _missing()
    except auto.CommandError as exc:
        sys.stderr.write(f"error: pulumi {action} failed for stack {name}: {str(exc).strip().splitlines()[-1]}\n")
        raise typer.Exit(1) from None


@stack_app.command()
def preview(stack: StackName, backend_url: Backend = None) -> None:
    """Show what `up` would change.  Example: meshctl stack preview --stack dev-aws"""
    _run("preview", stack, backend_url)


@stack_app.command()
def up(stack: StackName, backend_url: Backend = None) -> None:
    """Create or update the stack's nodes.  Example: meshctl stack up --stack dev-gcp"""
    _run("up", stack, backend_url)


@stack_app.command()
def destroy(
    stack: StackName,
    backend_url: Backend = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete every resource of the stack.  Example: meshctl stack destroy --stack dev-azure --yes"""
    if not yes and not typer.confirm(f"destroy every resource of stack {stack}?"):
        raise typer.Exit(1)
    _run("destroy", stack, backend_url)


@stack_app.command()
def outputs(stack: StackName, backend_url: Backend = None) -> None:
    """Each node's name, region id and public address.  Example: meshctl stack outputs --stack dev-aws"""
    s = _stack(stack, backend_url)
    try:
        values = {k: v.value for k, v in s.outputs().items() if not v.secret}
    except FileNotFoundError:
        _missing()
    typer.echo(json.dumps(values, indent=2))
