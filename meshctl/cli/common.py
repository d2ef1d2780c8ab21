"""What every `meshctl` command shares: the global options, output, and the one mapping from
the client's named errors to the documented exit codes and one-line messages.

Exit codes: 0 ok; 1 error; 2 usage; 3 a tool it needs is missing (pulumi); 4 controller
unreachable; 5 token missing, refused or without the scope; 6 not found; 7 invalid input or
conflict (409, 413, 422); 130 interrupted.

Start-up matters (an engineer runs dozens of these in an incident): nothing here imports the
client (httpx, pydantic), Rich or PyYAML at module level; each is imported by the first call
that needs it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import typer

from meshctl.cli import output

if TYPE_CHECKING:
    from rich.console import Console

    from meshctl.client import JsonClient, MeshError

EXIT_ERROR, EXIT_USAGE, EXIT_MISSING_TOOL = 1, 2, 3
EXIT_UNREACHABLE, EXIT_AUTH, EXIT_NOT_FOUND, EXIT_INVALID, EXIT_INTERRUPTED = 4, 5, 6, 7, 130


def exit_codes() -> tuple[tuple[type[MeshError], int], ...]:
    """Client error class -> exit code, most specific first."""
    from meshctl.client import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge, Unauthorized, Unreachable

    return (
        (Unreachable, EXIT_UNREACHABLE),
        (Unauthorized, EXIT_AUTH),
        (Forbidden, EXIT_AUTH),
        (NotFound, EXIT_NOT_FOUND),
        (Conflict, EXIT_INVALID),
        (PayloadTooLarge, EXIT_INVALID),
        (InvalidInput, EXIT_INVALID),
    )


def exit_code(exc: MeshError) -> int:
    """The documented exit code for a client error."""
    return next((code for cls, code in exit_codes() if isinstance(exc, cls)), EXIT_ERROR)


def message(exc: MeshError) -> str:
    """One line for a person: what the controller said and what to do about it."""
    from meshctl.client import Forbidden, NotFound, ServerError, Unauthorized, Unreachable

    if isinstance(exc, Unreachable):
        return f"{exc}: is it running? set --controller or MESHCTL_CONTROLLER, or `meshctl config use-context`"
    if isinstance(exc, Unauthorized):
        hint = "the token was refused" if exc.had_token else "no token given"
        return f"{hint} (401: {exc}): set --token or MESHCTL_TOKEN, or `meshctl config set-context NAME --token ...`"
    if isinstance(exc, Forbidden):
        return f"not allowed (403): {exc}; ask an admin for a token with that scope"
    if isinstance(exc, NotFound):
        hint = "see `meshctl regions list`" if "region" in str(exc) else "check the name or id"
        return f"{exc} (404): {hint}"
    if isinstance(exc, ServerError):
        return f"the controller failed ({exc.status}): {exc}"
    return f"{exc} ({exc.status})" if exc.status else str(exc)


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


@dataclass
class State:
    """The global options, and the client made from them on first use."""

    controller: str | None = None
    token: str | None = None
    context: str | None = None
    output: Output = Output.table
    _client: JsonClient | None = None

    def client(self) -> JsonClient:
        if self._client is None:
            # httpx imports its own command line (click, rich.progress, pygments: ~0.1 s) when
            # those are installed; meshctl never runs it. A None entry makes that import fail
            # as if they were absent, which httpx handles (`httpx.main` then explains itself).
            sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
            # httpcore imports trio whenever it is installed (~50 ms; Selenium brings it), for
            # async code under trio; the CLI is synchronous (its route watch uses asyncio).
            sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
            # pydantic looks for plugins in the entry points of every installed distribution
            # (importlib.metadata: 15-30 ms) before its first model; the commands that build one
            # (join-policies create) have no use for them. Commands calling the API start no
            # other process, so this stays in this one.
            os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
            # httpx only for commands that call the API; the answers stay JSON (no pydantic)
            from meshctl.client import JsonClient, resolve

            url, token, _ = resolve(self.controller, self.token, self.context)
            self._client = JsonClient(url, token)
        return self._client


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


def out() -> Console:
    return output.console()


def to_data(value: Any) -> Any:
    """Wire models (and lists of them) as the API's own JSON shape; anything else as it is."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [to_data(v) for v in value]
    return value


def emit(ctx: typer.Context, data: Any, render: Callable[[Any], Any] | None = None) -> None:
    """JSON/YAML for scripts (the API's own shape), or a view for people."""
    st = state(ctx)
    data = to_data(data)
    if st.output != Output.table:
        typer.echo(output.dump(data, st.output.value))
    elif render is not None:
        out().print(render(data))
    else:
        typer.echo(output.dump(data, "yaml"))


@contextlib.contextmanager
def progress(text: str) -> Iterator[None]:
    """A spinner on stderr while waiting, only for a person at a terminal."""
    if sys.stderr.isatty():
        with output.console(stderr=True).status(text):
            yield
    else:
        yield


def secret_from_file(path: str) -> str:
    """A token from a 0600 file of this user (`meshctl.files.read_secret_file`), or one error line, exit 1."""
    from meshctl.files import SecretFileError, read_secret_file

    try:
        return read_secret_file(path)
    except SecretFileError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(EXIT_ERROR) from None
