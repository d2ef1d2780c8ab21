"""`meshctl stack preview|up|refresh|destroy|outputs --stack NAME`: Pulumi's Automation API on stacks/.

Needs the pulumi CLI binary (the PyPI package is only the SDK). Where it is missing: one line
on how to install it and exit code 3. Without a backend configured, state goes to a local
file backend under ~/.meshctl/pulumi-state, for trying things out.

Secrets: a self-managed backend (file://, s3://, gs://, azblob://) encrypts them with a
passphrase or a cloud KMS. An empty passphrase is refused: set PULUMI_CONFIG_PASSPHRASE or
PULUMI_CONFIG_PASSPHRASE_FILE, or pass --secrets-provider (awskms://, gcpkms://,
azurekeyvault://, hashivault://). Pulumi Cloud (https://) has its own secrets provider.

Every preview and up runs the policy pack (stacks/policy). `outputs`, `refresh` and `destroy`
only select an existing stack (a typo never creates one); `up` asks before changing a prod*
stack. `refresh` reads the clouds' real state into the stack (drift: someone changed a
resource by hand); `refresh --preview-only` only shows the difference and changes nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

PULUMI_MISSING = 3
BAD_SETUP = 2
INSTALL_HINT = (
    "the pulumi CLI is not installed (meshctl stack needs it): install it with "
    "`curl -fsSL https://get.pulumi.com | sh` (see https://www.pulumi.com/docs/install/) and retry"
)
PASSPHRASE_HINT = (
    "no secrets passphrase for the {backend} backend: set PULUMI_CONFIG_PASSPHRASE or "
    "PULUMI_CONFIG_PASSPHRASE_FILE, or pass --secrets-provider (e.g. awskms://alias/meshctl); "
    "an empty passphrase would leave the stack's secrets readable"
)

stack_app = typer.Typer(
    help="Provision media nodes with Pulumi (preview, up, destroy, outputs).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

StackName = Annotated[str, typer.Option("--stack", help="Stack: <env>-<cloud>, e.g. dev-aws.")]
Backend = Annotated[
    str | None,
    typer.Option("--backend-url", help="Pulumi backend (default: $PULUMI_BACKEND_URL or a local file backend)."),
]
SecretsProvider = Annotated[
    str | None,
    typer.Option(
        "--secrets-provider",
        envvar="MESHCTL_SECRETS_PROVIDER",
        help="Secrets provider for a new stack (awskms://..., gcpkms://..., azurekeyvault://..., hashivault://...).",
    ),
]
Yes = Annotated[bool, typer.Option("--yes", help="Do not ask.")]


def stacks_dir() -> Path:
    """The Pulumi project: $MESHCTL_STACKS_DIR, else stacks/ of this checkout."""
    env = os.environ.get("MESHCTL_STACKS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "stacks"


def policy_pack() -> Path:
    return stacks_dir() / "policy"


def _backend(url: str | None) -> str:
    if url:
        return url
    if os.environ.get("PULUMI_BACKEND_URL"):
        return os.environ["PULUMI_BACKEND_URL"]
    state = Path.home() / ".meshctl" / "pulumi-state"
    state.mkdir(parents=True, exist_ok=True)
    return f"file://{state}"


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


def _has_passphrase() -> bool:
    if os.environ.get("PULUMI_CONFIG_PASSPHRASE"):
        return True
    path = os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    try:
        return bool(path) and Path(str(path)).is_file() and Path(str(path)).read_text().strip() != ""
    except OSError:
        return False


def _env(backend: str | None, secrets_provider: str | None) -> dict[str, str]:
    """The workspace's environment; refuses (exit 2) a self-managed backend without a secrets key."""
    url = _backend(backend)
    self_managed = not url.startswith(("https://", "http://"))
    using_passphrase = secrets_provider in (None, "", "passphrase")
    if self_managed and using_passphrase and not _has_passphrase():
        _fail(PASSPHRASE_HINT.format(backend=url.split("://", 1)[0] + "://"), BAD_SETUP)
    return {"PULUMI_BACKEND_URL": url}


def _workspace_opts(env: dict[str, str], secrets_provider: str | None) -> Any:
    from pulumi import automation as auto

    return auto.LocalWorkspaceOptions(env_vars=env, secrets_provider=secrets_provider or None)


def _select(name: str, backend: str | None, secrets_provider: str | None = None) -> Any:
    """An existing stack; a clear error (exit 1) if there is none of that name. Never creates."""
    from pulumi import automation as auto

    env = _env(backend, secrets_provider)
    try:
        return auto.select_stack(
            stack_name=name, work_dir=str(stacks_dir()), opts=_workspace_opts(env, secrets_provider)
        )
    except FileNotFoundError as exc:
        if "pulumi" in str(exc):
            _fail(INSTALL_HINT, PULUMI_MISSING)
        raise
    except auto.StackNotFoundError:
        _fail(
            f"stack {name} does not exist in {env['PULUMI_BACKEND_URL']} "
            "(check the name; `meshctl stack up` creates a stack)",
            1,
        )
    except auto.CommandError as exc:
        _fail(f"cannot select stack {name}: {_last_line(exc)}", 1)


def _create_or_select(name: str, backend: str | None, secrets_provider: str | None) -> Any:
    from pulumi import automation as auto

    env = _env(backend, secrets_provider)
    try:
        return auto.create_or_select_stack(
            stack_name=name, work_dir=str(stacks_dir()), opts=_workspace_opts(env, secrets_provider)
        )
    except FileNotFoundError as exc:
        if "pulumi" in str(exc):
            _fail(INSTALL_HINT, PULUMI_MISSING)
        raise
    except auto.CommandError as exc:
        _fail(f"cannot create or select stack {name}: {_last_line(exc)}", 1)


def _last_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _run(action: str, stack: Any, name: str, **kw: Any) -> Any:
    from pulumi import automation as auto

    try:
        return getattr(stack, action)(on_output=lambda line: print(line, end="" if line.endswith("\n") else "\n"), **kw)
    except FileNotFoundError:
        _fail(INSTALL_HINT, PULUMI_MISSING)
    except auto.CommandError as exc:
        _fail(f"pulumi {action} failed for stack {name}: {_last_line(exc)}", 1)


def _is_production(name: str) -> bool:
    return name.startswith("prod")


@stack_app.command()
def preview(stack: StackName, backend_url: Backend = None, secrets_provider: SecretsProvider = None) -> None:
    """Show what `up` would change, with the policy pack.  Example: meshctl stack preview --stack dev-aws"""
    s = _create_or_select(stack, backend_url, secrets_provider)
    _run("preview", s, stack, policy_packs=[str(policy_pack())])


@stack_app.command()
def up(
    stack: StackName, backend_url: Backend = None, secrets_provider: SecretsProvider = None, yes: Yes = False
) -> None:
    """Create or update the stack's nodes, with the policy pack.  Example: meshctl stack up --stack dev-gcp"""
    if _is_production(stack) and not yes:
        _env(backend_url, secrets_provider)  # refuse a bad setup before asking
        if not typer.confirm(f"change the production stack {stack}?"):
            _fail(f"not changing {stack} (pass --yes to skip this question)", 1)
    s = _create_or_select(stack, backend_url, secrets_provider)
    _run("up", s, stack, policy_packs=[str(policy_pack())])


@stack_app.command()
def refresh(
    stack: StackName,
    backend_url: Backend = None,
    preview_only: Annotated[bool, typer.Option("--preview-only", help="Show the drift; change nothing.")] = False,
    yes: Yes = False,
) -> None:
    """Read the clouds' real state into the stack (drift).  Example: meshctl stack refresh --stack dev-aws"""
    s = _select(stack, backend_url)
    if preview_only:
        _run("preview_refresh", s, stack)
        return
    if _is_production(stack) and not yes and not typer.confirm(f"write the clouds' state into {stack}?"):
        _fail(f"not refreshing {stack} (pass --yes to skip this question, --preview-only to only look)", 1)
    _run("refresh", s, stack)


@stack_app.command()
def destroy(stack: StackName, backend_url: Backend = None, yes: Yes = False) -> None:
    """Delete every resource of the stack.  Example: meshctl stack destroy --stack dev-azure --yes"""
    s = _select(stack, backend_url)
    if not yes and not typer.confirm(f"destroy every resource of stack {stack}?"):
        raise typer.Exit(1)
    _run("destroy", s, stack)


@stack_app.command()
def outputs(stack: StackName, backend_url: Backend = None) -> None:
    """Each node's name, region id and public address.  Example: meshctl stack outputs --stack dev-aws"""
    s = _select(stack, backend_url)
    try:
        values = {k: v.value for k, v in s.outputs().items() if not v.secret}
    except FileNotFoundError:
        _fail(INSTALL_HINT, PULUMI_MISSING)
    typer.echo(json.dumps(values, indent=2))
