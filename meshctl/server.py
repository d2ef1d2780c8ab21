"""`meshctl serve`: run the controller with uvicorn."""

from __future__ import annotations

import gc
import logging
import socket
import sys

import uvicorn

from meshctl.api.app import create_app
from meshctl.settings import Settings


def serve(
    host: str | None = None,
    port: int | None = None,
    database_url: str | None = None,
    replica_id: str | None = None,
    log_level: str = "info",
    **overrides: object,
) -> None:
    """Start the controller; flags override MESH_* environment settings."""
    given = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "database_url": database_url,
            "replica_id": replica_id,
            **overrides,
        }.items()
        if v is not None
    }
    settings = Settings(**given)  # type: ignore[arg-type]
    if settings.replica_id_explicit:
        _check_replica_id(settings)
    # The store runs in worker threads; with the default 5 ms GIL switch interval every
    # hand-back from the database driver waits on the event loop's thread (a convoy).
    sys.setswitchinterval(0.0005)
    # each report allocates thousands of short-lived objects: collect the young generation less often
    gc.set_threshold(20_000, 20, 20)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    where = f"http://{settings.host}:{settings.port}"
    print(
        f"meshctl controller {settings.replica_id} on {where} (API docs: {where}/docs), "
        f"database {_redact(settings.database_url)}",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5
    )
    _Server(config).run()


class _Server(uvicorn.Server):
    """uvicorn, with the waiting long polls answered as the shutdown begins (`release_long_polls`):
    the agents' peer polls end with a 304 and the connection closes, rather than each being
    cancelled with a 500 once the graceful shutdown's 5 s are up."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        controller = getattr(getattr(self.config.app, "state", None), "controller", None)
        if controller is not None:
            await controller.release_long_polls()
        await super().shutdown(sockets)


def _check_replica_id(settings: Settings) -> None:
    """An explicit replica id held by another live replica: one line on stderr, exit status 2.

    (If the database cannot be reached here, the controller's own start-up says so.)
    """
    from meshctl.service.leadership import ReplicaIdInUse, check_replica_id
    from meshctl.store.db import Store

    store = Store(settings.database_url)
    try:
        store.open()
        check_replica_id(store, settings)
    except ReplicaIdInUse as exc:
        print(f"meshctl serve: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except Exception as exc:  # the database: reported by the start-up proper
        logging.getLogger("meshctl.server").debug("replica id not checked: %s", exc)
    finally:
        store.close()


def _redact(url: str) -> str:
    """Hide a password in a database URL."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
