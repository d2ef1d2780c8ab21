"""`meshctl tokens`, `meshctl join-tokens`, `meshctl join-policies` and `meshctl config`: who may do
what, which machines may join, and how this machine connects (named contexts, like kubeconfig)."""

from __future__ import annotations

from typing import Annotated, Any, cast

import typer

from meshctl.cli import output
from meshctl.cli.common import emit, secret_from_file, state

tokens_app = typer.Typer(help="API tokens (admin): create, list, revoke.", no_args_is_help=True, rich_markup_mode=None)
join_app = typer.Typer(help="Join tokens for new nodes (admin).", no_args_is_help=True, rich_markup_mode=None)
config_app = typer.Typer(help="Named contexts: controller URL and token.", no_args_is_help=True, rich_markup_mode=None)
policies_app = typer.Typer(
    help="Join policies (admin): which cloud accounts may join by their identity, and where they land.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


# --- tokens --------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    ctx: typer.Context,
    scope: Annotated[str, typer.Option(help="admin, operator (drain/undrain) or reader.")],
    name: Annotated[str, typer.Option(help="A name to recognise it by.")] = "cli",
    ttl: Annotated[int | None, typer.Option(help="Seconds until it expires (default: never).")] = None,
) -> None:
    """Create an API token; the secret is shown once.  Example: meshctl tokens create --scope reader --name grafana"""
    if scope not in ("admin", "operator", "reader"):
        raise typer.BadParameter("scope is one of admin, operator, reader", param_hint="--scope")
    emit(ctx, state(ctx).client().create_token(name, cast(Any, scope), ttl))


@tokens_app.command("list")
def tokens_list(ctx: typer.Context) -> None:
    """Active tokens (never their secrets).  Example: meshctl tokens list"""
    emit(
        ctx,
        state(ctx).client().tokens(),
        lambda rows: output.table(
            None,
            ["id", "name", "scope", "created", "expires"],
            [
                [t["id"], t["name"], t["scope"], t["created_at"][:19], (t.get("expires_at") or "never")[:19]]
                for t in rows
            ],
        ),
    )


@tokens_app.command("revoke")
def tokens_revoke(ctx: typer.Context, token_id: str) -> None:
    """Revoke a token by id.  Example: meshctl tokens revoke 1a2b3c4d5e6f7a8b"""
    emit(ctx, state(ctx).client().revoke_token(token_id))


@join_app.command("create")
def join_tokens_create(
    ctx: typer.Context,
    region: Annotated[str, typer.Option(help="The one region it may join.")],
    ttl: Annotated[int, typer.Option(help="Seconds until it expires.")] = 3600,
    uses: Annotated[int, typer.Option(help="How many nodes may join with it.")] = 1,
) -> None:
    """A join token for new nodes in one region.  Example: meshctl join-tokens create --region aws:us-east-1 --uses 3"""
    emit(ctx, state(ctx).client().create_join_token(region, ttl, uses))


# --- join policies -------------------------------------------------------------------------


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key or not val:
            raise typer.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        out[key] = val
    return out


@policies_app.command("create")
def join_policies_create(
    ctx: typer.Context,
    policy_id: Annotated[str, typer.Argument(metavar="ID", help="A name, e.g. prod-aws (tried in id order).")],
    cloud: Annotated[str, typer.Option(help="aws, gcp or azure.")],
    account: Annotated[
        list[str], typer.Option(help="AWS account id, GCP project id or Azure subscription id (repeat for more).")
    ],
    region: Annotated[
        list[str] | None, typer.Option(help="CLOUD_REGION=MESH_REGION, e.g. us-east-1=aws:us-east-1 (repeat).")
    ] = None,
    any_region: Annotated[
        bool, typer.Option("--any-region", help="Unlisted cloud regions land in <cloud>:<cloud-region>.")
    ] = False,
    fixed_region: Annotated[str | None, typer.Option(help="Every node lands here (required for Azure).")] = None,
    max_nodes_per_region: Annotated[int | None, typer.Option(help="At most this many live nodes a region.")] = None,
    service_account: Annotated[list[str] | None, typer.Option(help="GCP: allowed service account emails.")] = None,
    resource_group: Annotated[list[str] | None, typer.Option(help="Azure: allowed resource groups.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE a signed tag must have (repeat).")] = None,
) -> None:
    """Admit a cloud account's nodes by their signed identity.

    Example: meshctl join-policies create prod-aws --cloud aws --account 111122223333 --region us-east-1=aws:us-east-1
    """
    from pydantic import ValidationError

    from meshctl.wire import schemas as s

    try:
        policy = s.JoinPolicyIn(
            id=policy_id,
            cloud=cast(Any, cloud),
            accounts=account,
            regions=cast(Any, _pairs(region or [], "--region")),
            any_region=any_region,
            fixed_region=fixed_region,
            max_nodes_per_region=max_nodes_per_region,
            service_accounts=service_account or [],
            resource_groups=resource_group or [],
            tags=_pairs(tag or [], "--tag"),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "policy"
        raise typer.BadParameter(f"{where}: {first['msg']}") from None
    emit(ctx, state(ctx).client().create_join_policy(policy))


@policies_app.command("list")
def join_policies_list(ctx: typer.Context) -> None:
    """Join policies, in the order they are tried.  Example: meshctl join-policies list"""

    def where(p: dict[str, Any]) -> str:
        if p.get("fixed_region"):
            return str(p["fixed_region"])
        mapped = [f"{k}={v}" for k, v in sorted((p.get("regions") or {}).items())]
        return ", ".join(mapped + (["any"] if p.get("any_region") else []))

    emit(
        ctx,
        state(ctx).client().join_policies(),
        lambda rows: output.table(
            None,
            ["id", "cloud", "accounts", "regions", "cap"],
            [
                [p["id"], p["cloud"], ", ".join(p["accounts"]), where(p), p.get("max_nodes_per_region") or "-"]
                for p in rows
            ],
        ),
    )


@policies_app.command("delete")
def join_policies_delete(ctx: typer.Context, policy_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Delete a join policy (nodes it admitted stay).  Example: meshctl join-policies delete prod-aws"""
    emit(ctx, state(ctx).client().delete_join_policy(policy_id))


# --- contexts ------------------------------------------------------------------------------


@config_app.command("set-context")
def set_context(
    name: str,
    controller: Annotated[str | None, typer.Option(help="Controller URL.")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token (visible in `ps`: prefer --token-file).")] = None,
    token_file: Annotated[str | None, typer.Option(help="Read the bearer token from this file (mode 0600).")] = None,
    use: Annotated[bool, typer.Option("--use", help="Also make it the current context.")] = False,
) -> None:
    """Create or update a context (saved 0600).

    Example: meshctl config set-context prod --controller https://mesh.example:8080 --token-file ~/.mesh-token --use
    """
    from meshctl.client import Config

    if token is None and token_file:
        token = secret_from_file(token_file)
    cfg = Config.load()
    cfg.set_context(name, controller, token)
    if use:
        cfg.current_context = name
    typer.echo(f"context {name} saved in {cfg.save()}")


@config_app.command("use-context")
def use_context(name: str) -> None:
    """Make a context current.  Example: meshctl config use-context prod"""
    from meshctl.client import Config, ConfigError, config_path

    cfg = Config.load()
    if name not in cfg.contexts:
        raise ConfigError(f"no context {name!r} in {config_path()}; see `meshctl config get-contexts`")
    cfg.current_context = name
    cfg.save()
    typer.echo(f"now using context {name}")


@config_app.command("get-contexts")
def get_contexts(ctx: typer.Context) -> None:
    """List contexts (tokens hidden).  Example: meshctl config get-contexts"""
    from meshctl.client import Config, config_path

    cfg = Config.load()
    rows = [
        {
            "name": n,
            "current": n == cfg.current_context,
            "controller": c.get("controller"),
            "token": "set" if c.get("token") else "none",
        }
        for n, c in sorted(cfg.contexts.items())
    ]
    emit(
        ctx,
        rows,
        lambda rs: output.table(
            str(config_path()),
            ["current", "name", "controller", "token"],
            [["*" if r["current"] else "", r["name"], r["controller"], r["token"]] for r in rs],
        ),
    )
