"""The documentation site: mkdocs.yml's nav lists every page in docs/ (and only pages that
exist), and ``mkdocs build --strict`` builds it, API reference included, without the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def nav_pages(entries: list[Any]) -> list[str]:
    pages: list[str] = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def site_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    return config


def test_the_nav_lists_every_page_once_and_only_pages_that_exist() -> None:
    pages = nav_pages(site_config()["nav"])
    assert len(pages) == len(set(pages)), "a page is listed twice"
    on_disk = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(pages) == on_disk, (
        f"not in mkdocs.yml's nav: {sorted(set(on_disk) - set(pages))}; "
        f"in the nav but not in docs/: {sorted(set(pages) - set(on_disk))}"
    )


def test_the_site_builds_strictly_with_the_api_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(proxy, None)
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    api = (site / "api" / "index.html").read_text()
    for name in ("send_task", "new_worker", "swap_drivers", "assert_sent", "wait_for_state"):
        assert name in api, f"{name} is missing from the API reference"
    assert (site / "testing" / "index.html").is_file()
