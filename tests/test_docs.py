"""The documentation is code: every fenced block in README.md and docs/*.md is checked here.

- ``python``: a page's blocks run in order in one namespace, inside one coroutine (so
  ``await`` works at the top of a block), in a scratch directory. A block whose first line is
  ``# file: PATH`` is written to PATH there instead (a module such as ``myapp/tasks.py``,
  importable by the blocks after it). The same code must pass ``mypy --strict`` without the
  pydantic plugin, as a user's project would check it.
- ``yaml``, ``json``: must parse (``# file: PATH`` writes them out first, for the blocks that
  read them); a YAML block with a ``broker`` key must load as a Go Machinery config.
- ``sh``: every ``machinery-aio`` line must parse with the real command-line parser, every
  ``pip install 'machinery-aio[...]'`` must name extras that exist, and every ``scripts/...``
  must be an executable script of this checkout.
- ``text``: sample output, not run. A fence without a language is refused.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from machinery_aio import Config
from machinery_aio.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
LANGUAGES = {"python", "sh", "yaml", "json", "text"}
FENCE = re.compile(r"^```([\w+-]*)[ \t]*$")
FILE_HEADER = re.compile(r"^#\s*file:\s*(\S+)\s*$")


@dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    file: str | None = field(default=None)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        block = Block(page, start + 1, match.group(1), "\n".join(body) + "\n")
        header = FILE_HEADER.match(body[0]) if body else None
        if header is not None:
            block.file = header.group(1)
        found.append(block)
    return found


ALL = [block for page in PAGES for block in blocks(page)]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_fence_names_its_language() -> None:
    bad = [f"{b.where}: ```{b.language}" for b in ALL if b.language not in LANGUAGES]
    assert not bad, f"fences need one of {sorted(LANGUAGES)}: {bad}"


# -- python: run and type-check ------------------------------------------------------------


def page_program(page: Path, scratch: Path, tail: str = "") -> str | None:
    """Write the page's file blocks under ``scratch`` and return its other Python blocks (and
    ``tail``) as the body of ``async def _page() -> None`` (None if the page has none)."""
    body: list[str] = []
    for block in blocks(page):
        if block.file is not None:
            target = scratch / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            for parent in target.relative_to(scratch).parents:
                if block.language == "python" and parent != Path("."):
                    (scratch / parent / "__init__.py").touch()
            target.write_text(block.code)
        elif block.language == "python":
            body.append(f"# {block.where}\n{block.code}")
    if not body:
        return None
    code = "\n".join(body) + tail
    return "async def _page() -> None:\n" + textwrap.indent(code, "    ") + "    pass\n"


RUN_TESTS = """
# The page's test functions run, as pytest would run them.
for _name, _test in list(locals().items()):
    if _name.startswith("test_") and callable(_test):
        _outcome = _test()
        if asyncio.iscoroutine(_outcome):
            await _outcome
"""


PYTHON_PAGES = [p for p in PAGES if any(b.language == "python" for b in blocks(p))]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=page_id)
def test_python_blocks_run(page: Path, tmp_path: Path) -> None:
    program = page_program(page, tmp_path, RUN_TESTS)
    if program is None:  # only file blocks: importing them is the run
        program = "async def _page() -> None:\n    pass\n"
    main = tmp_path / "_docs_page.py"
    main.write_text("import asyncio\n\n" + program + "\n\nasyncio.run(_page())\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for name in ("BROKER", "RESULT_BACKEND", "DEFAULT_QUEUE", "LOCK"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, str(main)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{page_id(page)} failed:\n{proc.stdout}\n{proc.stderr}"
    for block in blocks(page):
        if block.file and block.file.endswith(".py"):
            module = block.file.removesuffix(".py").replace("/", ".")
            check = subprocess.run(
                [sys.executable, "-c", f"import {module}"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert check.returncode == 0, f"{block.where}: {check.stderr}"


def test_python_blocks_pass_mypy_strict_without_plugins(tmp_path: Path) -> None:
    """A user's code written like the docs type-checks with ``mypy --strict`` and no plugin."""
    files: list[str] = []
    for number, page in enumerate(PYTHON_PAGES):
        scratch = tmp_path / f"page{number}"
        scratch.mkdir()
        program = page_program(page, scratch)
        if program is not None:
            (scratch / "_docs_page.py").write_text(program)
        files.append(str(scratch))
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\ncache_dir = {tmp_path / 'cache'}\n")
    failures = []
    for scratch in files:
        proc = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(config), "."],
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            failures.append(proc.stdout)
    assert not failures, "\n".join(failures)


# -- other languages ----------------------------------------------------------------------------


@pytest.mark.parametrize("block", [b for b in ALL if b.language in ("yaml", "json")], ids=lambda b: b.where)
def test_data_blocks_parse(block: Block, tmp_path: Path) -> None:
    if block.language == "json":
        json.loads(block.code)
        return
    doc = yaml.safe_load(block.code)
    if isinstance(doc, dict) and "broker" in doc:
        path = tmp_path / "config.yml"
        path.write_text(block.code)
        Config.from_yaml(path)


def shell_commands(code: str) -> list[list[str]]:
    """The command lines of a shell block, split and without comments. In a block that shows
    ``$ command`` prompts, only those lines are commands (the others are their output)."""
    lines = [line.strip() for line in code.splitlines()]
    prompted = any(line.startswith("$ ") for line in lines)
    commands = []
    for line in lines:
        if prompted:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


SHELL = [b for b in ALL if b.language == "sh"]


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.where)
def test_shell_blocks_name_real_commands(block: Block) -> None:
    parser = build_parser()
    for argv in shell_commands(block.code):
        program = argv[0]
        if program == "machinery-aio":
            try:
                parser.parse_args(argv[1:])
            except SystemExit as exc:
                pytest.fail(f"{block.where}: {' '.join(argv)} does not parse (exit {exc.code})")
        elif program == "pip":
            for arg in argv[2:]:
                match = re.fullmatch(r"machinery-aio(?:\[([\w,-]+)\])?", arg)
                assert match is not None, f"{block.where}: unexpected pip argument {arg}"
                for extra in filter(None, (match.group(1) or "").split(",")):
                    assert extra in EXTRAS, f"{block.where}: no extra {extra!r}"
        elif program.startswith("scripts/"):
            script = ROOT / program
            assert script.is_file(), f"{block.where}: no {program}"
            assert os.access(script, os.X_OK), f"{block.where}: {program} is not executable"
        elif program == "docker":
            assert (ROOT / "compose.yaml").is_file()
        elif program in ("python", "python3", "uvicorn", "curl", "cd", "go", "pytest", "mkdocs"):
            continue
        else:
            pytest.fail(f"{block.where}: unknown command {program!r}")


def test_the_harness_finds_blocks() -> None:
    assert len([b for b in ALL if b.language == "python"]) >= 10
    assert SHELL


def test_pages_link_to_pages_that_exist() -> None:
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:\s]+\.md)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).is_file():
                missing.append(f"{page_id(page)} -> {target}")
    assert not missing


SAMPLE_URLS = {
    "redis+socket": "redis+socket:///tmp/redis.sock",
    "redis+sentinel": "redis+sentinel://127.0.0.1:26379/0?master_name=mymaster",
    "rediss+sentinel": "rediss+sentinel://127.0.0.1:26379/0?master_name=mymaster",
    "gcppubsub": "gcppubsub://my-project/machinery-tasks-sub",
}


def test_every_url_scheme_the_docs_mention_builds_a_server() -> None:
    from machinery_aio import Server
    from machinery_aio.drivers import technology_of

    text = "\n".join(page.read_text() for page in PAGES)
    mentioned = set(re.findall(r"(?<![\w+.-])([a-z][a-z+]*)://", text)) - {"http", "https"}
    assert {"memory", "redis", "amqp"} <= mentioned
    for scheme in sorted(mentioned):
        url = SAMPLE_URLS.get(scheme, f"{scheme}://127.0.0.1/")
        tech = technology_of(url)
        assert tech is not None, f"the docs mention {scheme}:// but no driver serves it"
        config = Config(
            broker=url if tech.broker else "memory://", result_backend=url if tech.backend else "memory://"
        )
        Server(config)  # builds without connecting; raises ConfigError for an unknown scheme
