"""Build the agent's wheelhouse: every dependency of `meshctl[agent]`, pinned and hash-checked.

    python stacks/tools/agent_wheelhouse.py --wheel dist/meshctl-0.1.0-py3-none-any.whl --out dist \
        --python 3.12 --arch x86_64 --arch aarch64

Downloads (binary wheels only, never an sdist to build on the node) the dependencies of the
wheel's `agent` extra for CPython <python> on Linux <arch> (Ubuntu 24.04: 3.12, glibc 2.39),
every architecture pinned to the same versions, and writes:

  <out>/meshctl-agent-wheelhouse-<version>-cp<py>.tar.gz   wheelhouse/*.whl + requirements-agent.txt
  <out>/requirements-agent.txt                             `name==version --hash=sha256:...` lines
  <out>/SHA256SUMS                                         the agent wheel and the tarball

The node installs with `pip install --no-index --require-hashes --find-links wheelhouse -r
requirements-agent.txt` plus one line for the agent wheel itself (`meshctl[agent] @ file://...
--hash=sha256:...`), so nothing is resolved by name on a public index at boot.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

GLIBC_MINORS = range(17, 40)  # manylinux_2_17 (manylinux2014) .. manylinux_2_39 (Ubuntu 24.04)
WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-.+\.whl$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def platforms(arch: str) -> list[str]:
    """pip does not widen a `manylinux_2_39` --platform to older glibc tags: list them all."""
    return [f"manylinux_2_{m}_{arch}" for m in GLIBC_MINORS] + [f"manylinux2014_{arch}", f"linux_{arch}"]


def download(pip: list[str], wheel: Path, dest: Path, python: str, arch: str, constraints: Path | None) -> None:
    abi = "cp" + python.replace(".", "")
    cmd = [*pip, "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:", "--dest", str(dest)]
    cmd += ["--python-version", python, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for p in platforms(arch):
        cmd += ["--platform", p]
    if constraints is not None:
        cmd += ["-c", str(constraints)]
    cmd.append(f"meshctl[agent] @ {wheel.resolve().as_uri()}")
    subprocess.run(cmd, check=True)


def pins(wheels: list[Path]) -> dict[str, tuple[str, list[Path]]]:
    """canonical name -> (version, its wheel files); one version per project or an error."""
    found: dict[str, tuple[str, list[Path]]] = {}
    for w in sorted(wheels):
        m = WHEEL_NAME.match(w.name)
        if m is None:
            raise SystemExit(f"agent_wheelhouse: not a wheel file name: {w.name}")
        name, version = canonical(m["name"]), m["version"]
        if name in found and found[name][0] != version:
            raise SystemExit(f"agent_wheelhouse: {name} resolved to {found[name][0]} and {version}")
        found.setdefault(name, (version, []))[1].append(w)
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def requirements(found: dict[str, tuple[str, list[Path]]], python: str, arches: list[str]) -> str:
    lines = [
        f"# meshctl agent dependencies for CPython {python} on Linux {', '.join(arches)};",
        "# written by stacks/tools/agent_wheelhouse.py: install with --require-hashes --no-index",
    ]
    for name, (version, files) in sorted(found.items()):
        hashes = sorted({sha256(f) for f in files})
        lines.append(f"{name}=={version} \\")
        lines += [f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "") for i, h in enumerate(hashes)]
    return "\n".join(lines) + "\n"


def reproducible_tar(out: Path, members: list[tuple[str, bytes]]) -> None:
    """Same inputs, same bytes (sorted names, zero times and owners): its sha256 can be re-checked."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    with open(out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())


def build(wheel: Path, out: Path, python: str, arches: list[str], pip: list[str]) -> Path:
    m = WHEEL_NAME.match(wheel.name)
    if m is None or canonical(m["name"]) != "meshctl":
        raise SystemExit(f"agent_wheelhouse: {wheel} is not a meshctl wheel")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        dest, constraints = Path(tmp) / "wheels", Path(tmp) / "constraints.txt"
        for i, arch in enumerate(arches):
            download(pip, wheel, dest, python, arch, constraints if i else None)
            deps = {k: v for k, v in pins(list(dest.glob("*.whl"))).items() if k != "meshctl"}
            constraints.write_text("".join(f"{k}=={v}\n" for k, (v, _) in sorted(deps.items())))
        reqs = requirements(deps, python, arches)
        members = [("wheelhouse/requirements-agent.txt", reqs.encode())]
        members += [(f"wheelhouse/{f.name}", f.read_bytes()) for _, files in deps.values() for f in files]
        tarball = out / f"meshctl-agent-wheelhouse-{m['version']}-cp{python.replace('.', '')}.tar.gz"
        reproducible_tar(tarball, members)
    (out / "requirements-agent.txt").write_text(reqs)
    sums = [f"{sha256(p)}  {p.name}\n" for p in sorted([wheel, tarball])]
    (out / "SHA256SUMS").write_text("".join(sums))
    return tarball


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--wheel", type=Path, required=True, help="the meshctl wheel (pip wheel --no-deps .)")
    parser.add_argument("--out", type=Path, required=True, help="where the tarball and SHA256SUMS go")
    parser.add_argument("--python", default="3.12", help="the node's CPython version (Ubuntu 24.04: 3.12)")
    parser.add_argument("--arch", action="append", help="x86_64, aarch64 (repeat; default both)")
    args = parser.parse_args(argv)
    arches = args.arch or ["x86_64", "aarch64"]
    tarball = build(args.wheel, args.out, args.python, arches, [sys.executable, "-m", "pip"])
    print(f"{tarball}\n{args.out / 'SHA256SUMS'}")


if __name__ == "__main__":
    main()
