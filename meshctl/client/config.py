"""Named contexts (like kubeconfig): controller URL and token per context, in one YAML file.

Shared by the CLI (`meshctl config ...`), the lab (which makes its controller the current
context) and any program that wants to connect as `meshctl` would (`Client.from_context`).

File: $MESHCTL_CONFIG, else `<user config dir>/meshctl/config.yaml`, written with mode 0600.
Precedence when connecting: flags > MESHCTL_CONTROLLER / MESHCTL_TOKEN > the context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platformdirs import user_config_dir

from meshctl.files import atomic_write

DEFAULT_CONTROLLER = "http://127.0.0.1:8080"


class ConfigError(Exception):
    """The config file is unreadable or malformed; the message names the file."""


def config_path() -> Path:
    env = os.environ.get("MESHCTL_CONFIG")
    return Path(env) if env else Path(user_config_dir("meshctl")) / "config.yaml"


@dataclass
class Config:
    current_context: str | None = None
    contexts: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or config_path()
        if not path.exists():
            return cls()
        import yaml  # here, not at the top: most programs importing the client never read the file

        try:
            data: Any = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}".splitlines()[0]) from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping with 'current-context' and 'contexts'")
        contexts = data.get("contexts") or {}
        if not isinstance(contexts, dict) or not all(isinstance(v, dict) for v in contexts.values()):
            raise ConfigError(f"{path}: 'contexts' must map names to {{controller, token}}")
        current = data.get("current-context")
        if current is not None and not isinstance(current, str):
            raise ConfigError(f"{path}: 'current-context' must be a name")
        return cls(current, {str(k): {str(a): str(b) for a, b in v.items()} for k, v in contexts.items()})

    def save(self, path: Path | None = None) -> Path:
        path = path or config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        import yaml

        text = yaml.safe_dump({"current-context": self.current_context, "contexts": self.contexts}, sort_keys=True)
        atomic_write(path, text, mode=0o600)
        return path

    def set_context(self, name: str, controller: str | None, token: str | None) -> None:
        ctx = self.contexts.setdefault(name, {})
        if controller:
            ctx["controller"] = controller
        if token:
            ctx["token"] = token
        if self.current_context is None:
            self.current_context = name


def resolve(controller: str | None, token: str | None, context: str | None) -> tuple[str, str | None, str | None]:
    """(controller URL, token, context name used) from flags, environment and the config file."""
    cfg = Config.load()
    name = context or cfg.current_context
    if context and context not in cfg.contexts:
        raise ConfigError(f"no context {context!r} in {config_path()}; see `meshctl config get-contexts`")
    ctx = cfg.contexts.get(name or "", {})
    url = controller or os.environ.get("MESHCTL_CONTROLLER") or ctx.get("controller") or DEFAULT_CONTROLLER
    tok = token or os.environ.get("MESHCTL_TOKEN") or ctx.get("token")
    return url.rstrip("/"), tok, name
