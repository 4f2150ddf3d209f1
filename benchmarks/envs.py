"""The interpreters the targets run in: this one for machinery-aio, made-on-demand venvs for peers.

arq pins ``redis<6`` and taskiq-redis needs ``redis>=8``, so the peers live in two venvs
(``benchmarks/.venv`` and ``benchmarks/.venv-arq``), each installed from its requirements file
the first time it is needed and again whenever that file changes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent

ENVS: dict[str, tuple[Path, Path]] = {
    "peers": (HERE / ".venv", HERE / "requirements.txt"),
    "arq": (HERE / ".venv-arq", HERE / "requirements-arq.txt"),
}


class EnvError(Exception):
    """A venv could not be made; the message carries pip's last lines."""


def _stamp(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def interpreter(name: str, log: Path | None = None) -> str:
    """The Python to run ``name``'s targets with, creating its venv if missing or stale."""
    if name == "main":
        return sys.executable
    home, requirements = ENVS[name]
    python = home / "bin" / "python"
    stamp = home / ".requirements-sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == _stamp(requirements):
        return str(python)
    print(f"installing {requirements.name} into {home} ...", file=sys.stderr, flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(home)
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(requirements)],
        capture_output=True,
        text=True,
        check=False,
    )
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise EnvError(f"pip install -r {requirements.name} failed: {tail}")
    stamp.write_text(_stamp(requirements))
    return str(python)
