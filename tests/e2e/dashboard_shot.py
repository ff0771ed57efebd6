"""The dashboard in a real headless Chromium, driven by Playwright: a browser page, and
screenshots of each view once it shows its data.

The end-to-end test (``test_dashboard.py``) takes its screenshots with :func:`capture`;
run as a script, this module starts a cluster of real processes, gives it some work and
uses the same :func:`capture` to write the README's picture::

    python -m tests.e2e.dashboard_shot docs/dashboard.png

Chromium is Debian's (``apt-get install chromium``; ``STRATA_CHROMIUM`` names another
binary): Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import Page, ViewportSize, async_playwright, expect

from strata.common.client import Client
from strata.local.cluster import Cluster, wait_until
from strata.local.postgres import EmbeddedPostgres, free_port

CHROMIUM = os.environ.get("STRATA_CHROMIUM", "/usr/bin/chromium")
VIEWPORT: ViewportSize = {"width": 1360, "height": 860}
EXPECT_TIMEOUT_MS = 20_000
# "dag" is a task's page too, one whose task has parents or dependents: its graph drawn.
VIEWS = ("overview", "tasks", "task", "dag", "regions")


@asynccontextmanager
async def browser_page() -> AsyncIterator[Page]:
    """One page of a fresh headless Chromium, closed afterwards."""
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = await browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
            yield await context.new_page()
        finally:
            await browser.close()


async def show(page: Page, view: str, *, task_id: str | None = None) -> None:
    """Go to one view by its hash route (the page is not reloaded) and wait until it
    shows data."""
    route = {"overview": "#/", "tasks": "#/tasks", "regions": "#/regions",
             "task": f"#/tasks/{task_id}", "dag": f"#/tasks/{task_id}"}[view]
    await page.evaluate("route => { location.hash = route; }", route)
    await expect(page.locator("body")).to_have_attribute(
        "data-view", "task" if view == "dag" else view)
    ready = {
        "overview": "[data-state-count='succeeded'], .regions-table",
        "tasks": ".tasks-table",
        "task": f".task-page[data-task-id='{task_id}']",
        "dag": f".task-page[data-task-id='{task_id}'] svg.dag",
        "regions": ".workers-table",
    }[view]
    await expect(page.locator(ready).first).to_be_visible()
    await expect(page.locator(".view-error [role=alert]")).to_have_count(0)


async def capture(page: Page, out_dir: Path, *, task_id: str,
                  views: tuple[str, ...] = VIEWS) -> dict[str, Path]:
    """A screenshot of each view (the task and dag views show ``task_id``), as
    ``<out_dir>/<view>.png``; the page is on the dashboard already."""
    shots = {}
    for view in views:
        await show(page, view, task_id=task_id)
        # A notice left by an earlier click would cover part of the view.
        await page.evaluate("document.getElementById('toast').hidden = true")
        await page.evaluate("document.fonts.ready.then(() => true)")
        shots[view] = out_dir / f"{view}.png"
        await page.screenshot(path=shots[view], full_page=True)
    return shots


# ---- the README's picture -----------------------------------------------------------


async def seed(c: Client) -> tuple[str, str]:
    """Some work of each kind and outcome; returns the id of a task worth showing, and of
    one whose graph is."""
    ids = await c.create_batch(
        [{"kind": "shell", "command": f"echo building report {i}; sleep 0.{i % 4}"}
         for i in range(18)]
        + [{"kind": "sleep", "seconds": 0.5, "region": "eu-west"} for _ in range(4)]
        + [{"kind": "noop"} for _ in range(6)]
    )
    failing = await c.create(kind="shell", command="echo 'disk quota exceeded' >&2; exit 3",
                             max_attempts=2)
    shown = await c.create(kind="shell",
                           command="echo 'resized 128 images'; echo 'uploaded to s3://media'")
    long = await c.create(kind="shell", command="sleep 300", priority=5)
    doomed = await c.create(kind="shell", command="sleep 300")
    # A pipeline half done: its second stage running, the rest waiting on it.
    dag = await c.create_batch([
        {"kind": "shell", "command": "echo extracted", "key": "extract"},
        {"kind": "shell", "command": "echo cleaned", "key": "clean", "depends_on": ["extract"]},
        {"kind": "shell", "command": "sleep 300 # transform", "key": "transform",
         "depends_on": ["extract"]},
        {"kind": "shell", "command": "./load-warehouse.sh", "key": "load",
         "depends_on": ["clean", "transform"]},
        {"kind": "http", "url": "https://example.com/hooks/loaded", "key": "notify",
         "depends_on": ["load"]},
        {"kind": "python", "handler": "reports.daily:build", "key": "report",
         "depends_on": ["load"]},
    ])
    await c.create(kind="shell", command="./nightly-backup.sh",
                   run_at=(datetime.now(UTC) + timedelta(hours=6)).isoformat())
    for task_id in [*ids, failing["id"], shown["id"]]:
        await c.wait(task_id, timeout_s=60)

    async def running(task_id: str) -> bool:
        return bool((await c.get(task_id))["state"] == "running")

    await wait_until(lambda: running(doomed["id"]), what="a long task running")
    await c.cancel(doomed["id"])
    await wait_until(lambda: running(long["id"]), what="a long task running")
    await c.wait(dag[1], timeout_s=60)
    await wait_until(lambda: running(dag[2]), what="a pipeline's stage running")
    return str(shown["id"]), dag[3]


async def _screenshot(home: Path, database_url: str, view: str) -> Path:
    """Start a cluster in ``home``, give it work, and take one view's screenshot."""
    cluster = Cluster(workdir=home, database_url=database_url)
    try:
        await cluster.start_master()
        await cluster.start_region("us-east")
        await cluster.start_region("eu-west")
        await cluster.start_worker("us-east", "us-east-w1")
        await cluster.start_worker("us-east", "us-east-w2")
        await cluster.start_worker("eu-west", "eu-west-w1", concurrency=2)
        async with cluster.client() as c:
            task_id, dag_id = await seed(c)
            async with browser_page() as page:
                await page.goto(cluster.api + "/")
                await expect(page.locator("#live")).to_have_attribute("data-mode", "events")
                shots = await capture(page, home / "shots",
                                      task_id=dag_id if view == "dag" else task_id,
                                      views=(view,))
            return shots[view]
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where to write the PNG")
    parser.add_argument("--view", choices=VIEWS, default="overview")
    args = parser.parse_args(argv)
    # Not under /tmp's own 0700 temp dirs: the server runs as another user under root.
    home = Path(tempfile.mkdtemp(prefix="strata-shot-"))
    home.chmod(0o755)
    server = EmbeddedPostgres(home / "pg", port=free_port(), fast=True)
    try:
        server.start()
        shot = asyncio.run(_screenshot(home, server.url, args.view))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, args.out)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
