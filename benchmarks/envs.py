"""The interpreters the targets run in: this one for machinery-aio, made-on-demand venvs for peers.

arq pins ``redis<6`` and taskiq-redis needs ``redis>=8``, so the peers live in two venvs
(``benchmarks/.venv`` and ``benchmarks/.venv-arq``), each installed from its requirements file
the first time it is needed and again whenever that file changes. ``--baseline REV`` measures
machinery-aio as it was at a git revision: its source (``git archive``) is installed into
``benchmarks/.venv-baseline-<rev>``, and its driver runs from a copy of ``benchmarks/`` there, so
that nothing imports this checkout's package.
"""

from __future__ import annotations

import hashlib
import shutil
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
    if name.startswith("baseline:"):
        return _baseline(name.partition(":")[2], log)
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


def baseline_home(revision: str) -> Path:
    return HERE / f".venv-baseline-{revision}"


def run_dir(name: str) -> Path | None:
    """Where a baseline target's driver runs: a fresh copy of ``benchmarks/`` (None: this checkout)."""
    if not name.startswith("baseline:"):
        return None
    target = baseline_home(name.partition(":")[2]) / "run"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(
        HERE, target / "benchmarks", ignore=shutil.ignore_patterns(".venv*", "results", "__pycache__")
    )
    return target


def _baseline(revision: str, log: Path | None) -> str:
    home = baseline_home(revision)
    python = home / "bin" / "python"
    stamp = home / ".revision"
    commit = _git("rev-parse", revision).strip()
    if python.exists() and stamp.exists() and stamp.read_text() == commit:
        return str(python)
    print(f"installing machinery-aio at {revision} into {home} ...", file=sys.stderr, flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(home)
    source = home / "src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=HERE.parent, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"{source}[redis,amqp,uvloop]",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise EnvError(f"installing machinery-aio at {revision} failed: {tail}")
    stamp.write_text(commit)
    return str(python)


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise EnvError(f"git {' '.join(args)}: {exc.stderr.strip()}") from None
