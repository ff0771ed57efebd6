"""The dashboard in a real headless Chromium on real processes: a task submitted over
REST shows up and finishes on the open page without a reload, its page shows its
output, and a long task is cancelled from its page."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Request, expect

from strata.local.cluster import Cluster
from tests.e2e.dashboard_shot import VIEWS, browser_page, capture, show

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_dashboard_follows_tasks_live_and_cancels_one(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    async with cluster.client() as c, browser_page() as page:
        streams: list[str] = []

        def on_request(request: Request) -> None:
            if request.url.startswith(cluster.api + "/v1/events"):
                streams.append(request.resource_type)

        page.on("request", on_request)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(cluster.api + "/")
        await expect(page.locator("[data-state-count='succeeded'] .card-value")).to_have_text("0")
        await expect(page.locator(".regions-table tr[data-region='east']")).to_be_visible()
        # The page keeps itself current from the event stream.
        await expect(page.locator("#live")).to_have_attribute("data-mode", "events")
        # Survives only as long as this document: a reload would lose it.
        await page.evaluate("window.sameDocument = true")

        await page.get_by_role("link", name="Tasks", exact=True).click()
        await expect(page.locator("body")).to_have_attribute("data-view", "tasks")
        await expect(page.locator(".empty")).to_have_text("No tasks.")
        created = await c.create(kind="shell", command="echo hello from the dashboard")
        row = page.locator(f"tr[data-task-id='{created['id']}']")
        await expect(row).to_be_visible()
        await expect(row.locator(".badge")).to_have_text("succeeded")
        await expect(row.locator(".payload-cell")).to_have_text("echo hello from the dashboard")

        await row.locator("a.task-link").click()
        task_page = page.locator(f".task-page[data-task-id='{created['id']}']")
        await expect(task_page.locator(".output")).to_have_text("hello from the dashboard\n")
        await expect(task_page.locator(".attempt[data-outcome='succeeded']")).to_have_count(1)
        await expect(task_page.get_by_role("button", name="Cancel")).to_be_disabled()

        # A long task, opened while it is pending: its page follows it to running.
        long = await c.create(kind="shell", command="sleep 300")
        await show(page, "task", task_id=long["id"])
        long_page = page.locator(f".task-page[data-task-id='{long['id']}']")
        await expect(long_page.locator(".actions .badge")).to_have_text("running")
        await expect(long_page.locator(".attempt[data-outcome='running']")).to_have_count(1)
        await long_page.get_by_role("button", name="Cancel").click()
        await expect(long_page.locator(".actions .badge")).to_have_text("cancelled")
        await expect(long_page.get_by_role("button", name="Retry")).to_be_enabled()
        assert (await c.get(long["id"]))["state"] == "cancelled"

        # Retry makes a new task that names this one, and opens it.
        await long_page.get_by_role("button", name="Retry").click()
        retried = page.locator(".task-page").filter(has=page.get_by_text("Retry of"))
        await expect(retried.locator(f"a[href='#/tasks/{long['id']}']")).to_be_visible()
        retry_id = await retried.get_attribute("data-task-id")
        assert retry_id is not None and retry_id != long["id"]
        assert (await c.get(retry_id))["retry_of"] == long["id"]
        await c.cancel(retry_id)
        await expect(retried.locator(".actions .badge")).to_have_text("cancelled")

        # Filters and the search by id.
        await show(page, "tasks")
        rows = page.locator(".tasks-table tbody tr")
        await expect(rows).to_have_count(3)
        await page.get_by_label("State").select_option("cancelled")
        await expect(rows).to_have_count(2)
        await page.get_by_label("Kind").select_option("noop")
        await expect(page.locator(".empty")).to_have_text("No tasks.")
        await page.get_by_label("Kind").select_option("")
        await page.get_by_label("State").select_option("")
        await page.get_by_label("Search by id").fill(created["id"][:8])
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-task-id", created["id"])

        # Every view, with what this test did in it.
        await show(page, "overview")
        await expect(page.locator("[data-state-count='succeeded'] .card-value")).to_have_text("1")
        await expect(page.locator("[data-state-count='cancelled'] .card-value")).to_have_text("2")
        await show(page, "regions")
        await expect(page.locator(".workers-table tr[data-worker='east-w1'] .badge")
                     ).to_have_text("up")
        shots = await capture(page, tmp_path / "screenshots", task_id=created["id"])
        assert sorted(shots) == sorted(VIEWS)
        for shot in shots.values():
            assert shot.stat().st_size > 10_000, shot

        assert await page.evaluate("window.sameDocument") is True
        assert "eventsource" in streams, streams
        assert errors == [], errors
