"""The node agent: join, WireGuard tunnel, STAMP probes, windowed statistics, reports (`probes.cli`)."""

import sys

# httpx imports its own command line (Rich, Pygments, Click) whenever those are installed, as they
# are beside meshctl's CLI; the agent never runs it. A None entry makes that one import fail, and
# httpx falls back to a stub (importlib: "if the value is None, ImportError is raised"): the
# agent starts 5.6 MiB smaller and about 40 ms sooner. Nothing else changes, and a process that
# imported httpx's command line first keeps it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
