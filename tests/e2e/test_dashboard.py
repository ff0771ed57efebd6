"""The dashboard in a real headless Chromium on real processes: a task submitted over
REST shows up and finishes on the open page without a reload, its page shows its
output, and a long task is cancelled from its page; a task of a DAG has its graph drawn,
which follows its tasks as they run; a master with API tokens has the page ask for one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Request, expect

from strata.common.tokens import new_token
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
        await expect(page.locator("body"), f"page errors: {errors}").to_have_attribute(
            "data-view", "tasks")
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
        # (No DAG here: the graph's own test takes the "dag" view.)
        views = tuple(v for v in VIEWS if v != "dag")
        shots = await capture(page, tmp_path / "screenshots", task_id=created["id"],
                              views=views)
        assert sorted(shots) == sorted(views)
        for shot in shots.values():
            assert shot.stat().st_size > 10_000, shot

        assert await page.evaluate("window.sameDocument") is True
        assert "eventsource" in streams, streams
        assert errors == [], errors


async def test_task_page_draws_its_dag_and_follows_it_live(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    gate = tmp_path / "go"
    async with cluster.client() as c, browser_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # A diamond: a, then b and c, then d. a runs until the test lets it finish.
        a, b, c_, d = await c.create_batch([
            {"kind": "shell", "key": "a",
             "command": f"until [ -e {gate} ]; do sleep 0.05; done; echo a done"},
            {"kind": "noop", "key": "b", "depends_on": ["a"]},
            {"kind": "noop", "key": "c", "depends_on": ["a"], "concurrency_key": "lane-c"},
            {"kind": "noop", "key": "d", "depends_on": ["b", "c"]},
        ])
        await page.goto(cluster.api + "/")
        await expect(page.locator("#live")).to_have_attribute("data-mode", "events")
        await expect(page.locator("[data-state-count='waiting'] .card-value")).to_have_text("3")
        await page.evaluate("window.sameDocument = true")
        await show(page, "tasks")
        await page.get_by_label("State").select_option("waiting")
        rows = page.locator(".tasks-table tbody tr")
        await expect(rows).to_have_count(3)
        await expect(rows.locator(".badge")).to_have_text(["waiting"] * 3)

        await show(page, "task", task_id=d)
        task_page = page.locator(f".task-page[data-task-id='{d}']")
        dag = task_page.locator("svg.dag")
        nodes = dag.locator(".dag-node")
        edges = dag.locator(".dag-edge")
        node = {i: dag.locator(f".dag-node[data-task-id='{i}']") for i in (a, b, c_, d)}
        await expect(nodes).to_have_count(4)
        await expect(edges).to_have_count(4)
        for parent, child in ((a, b), (a, c_), (b, d), (c_, d)):
            await expect(dag.locator(f".dag-edge[data-parent='{parent}'][data-child='{child}']")
                         ).to_have_count(1)
        await expect(node[a]).to_have_attribute("data-state", "running")
        for waiting in (b, c_, d):
            await expect(node[waiting]).to_have_attribute("data-state", "waiting")
        await expect(node[d]).to_have_class(re.compile(r"\broot\b"))
        await expect(node[b]).not_to_have_class(re.compile(r"\broot\b"))
        await expect(node[a].locator(".dag-label")).to_have_text(re.compile(r"^until \[ -e .*…$"))
        await expect(node[d].locator(".dag-state")).to_have_text("waiting · noop")
        await expect(task_page.locator(".dag-more")).to_have_count(0)
        # Layered: parents left of their children, b and c side by side.
        xs = []
        for i in (a, b, c_, d):
            box = await node[i].bounding_box()
            assert box is not None, i
            xs.append(box["x"])
        ax, bx, cx, dx = xs
        assert ax < bx == cx < dx, xs
        # Its fields: the parents as links, why it waits.
        await expect(task_page.locator(".actions .badge")).to_have_text("waiting")
        await expect(task_page.locator(".waiting")).to_have_text(
            "Waiting for 2 of its 2 parents to succeed.")
        parents = task_page.locator(".depends-on a")
        await expect(parents).to_have_count(2)
        assert {await link.get_attribute("href") for link in await parents.all()} == {
            f"#/tasks/{b}", f"#/tasks/{c_}"}
        await expect(task_page.locator(".dependents")).to_have_count(0)
        shots = await capture(page, tmp_path / "screenshots", task_id=d, views=("dag",))
        assert shots["dag"].stat().st_size > 10_000, shots

        # Let a finish: the drawing follows every task to succeeded, without a reload.
        gate.touch()
        for i in (a, b, c_, d):
            await expect(node[i]).to_have_attribute("data-state", "succeeded")
        await expect(task_page.locator(".actions .badge")).to_have_text("succeeded")
        await expect(node[a].locator(".dag-state")).to_have_text("succeeded · shell")

        # A box is a link to its task's page; c's page names its dependent and its key.
        await node[b].click()
        b_page = page.locator(f".task-page[data-task-id='{b}']")
        await expect(b_page).to_be_visible()
        await expect(b_page.locator("svg.dag .dag-node.root")).to_have_attribute(
            "data-task-id", b)
        await expect(b_page.locator(f".dependents a[href='#/tasks/{d}']")).to_be_visible()
        # Its ancestors and descendants, not its sibling c.
        await expect(b_page.locator("svg.dag .dag-node")).to_have_count(3)
        await expect(b_page.locator(f"svg.dag .dag-node[data-task-id='{c_}']")).to_have_count(0)
        await b_page.locator(f"svg.dag .dag-node[data-task-id='{a}']").click()
        a_page = page.locator(f".task-page[data-task-id='{a}']")
        await expect(a_page.locator("svg.dag .dag-node")).to_have_count(4)
        await expect(a_page.locator(".output")).to_have_text("a done\n")
        await a_page.locator(f"svg.dag .dag-node[data-task-id='{c_}']").click()
        c_page = page.locator(f".task-page[data-task-id='{c_}']")
        await expect(c_page.locator(".concurrency-key")).to_have_text("lane-c")
        await expect(c_page.locator(".depends-on a")).to_have_attribute("href", f"#/tasks/{a}")

        # A task on its own has no graph to draw.
        alone = await c.create(kind="noop")
        await c.wait(alone["id"], timeout_s=30)
        await show(page, "task", task_id=alone["id"])
        await expect(page.locator(f".task-page[data-task-id='{alone['id']}'] .result")
                     ).to_be_visible()
        await expect(page.locator(".deps")).to_have_count(0)

        # A task with more around it than is drawn: the nearest 200, and a note.
        hub, *_ = await c.create_batch(
            [{"kind": "noop", "key": "hub"}]
            + [{"kind": "noop", "key": f"leaf{n}", "depends_on": ["hub"]} for n in range(210)])
        await show(page, "dag", task_id=hub)
        hub_page = page.locator(f".task-page[data-task-id='{hub}']")
        await expect(hub_page.locator("svg.dag .dag-node")).to_have_count(200)
        await expect(hub_page.locator("svg.dag .dag-edge")).to_have_count(199)
        await expect(hub_page.locator(".dag-more")).to_contain_text("(more not shown)")
        await expect(hub_page.locator(".dependents")).to_contain_text("and 198 more")
        assert await page.evaluate("window.sameDocument") is True
        assert errors == [], errors


async def test_with_api_tokens_the_page_asks_for_one_and_then_follows_tasks_live(
    cluster: Cluster,
) -> None:
    """A master with a token: the page asks for it (once, however many calls were
    refused; again if the one given is not accepted), keeps it for the tab, sends it on
    every call and reads the event stream with it (fetch, not EventSource, which cannot
    send a header), and never puts it in a URL."""
    cluster.token = new_token()
    await cluster.start_master()
    await cluster.start_region("east")
    await cluster.start_worker("east", "east-w1")
    async with cluster.client() as c, browser_page() as page:
        requests: list[Request] = []
        page.on("request", lambda request: requests.append(request))
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(cluster.api + "/")
        signin = page.locator("#signin")
        await expect(signin).to_be_visible()
        await expect(page.locator("#signin-why")).to_have_text("This Strata needs an API token.")
        await expect(page.locator("[data-state-count]")).to_have_count(0)

        # A wrong one is refused, and asked for again.
        await page.get_by_label("API token").fill("st_not-the-token")
        await page.get_by_role("button", name="Use this token").click()
        await expect(page.locator("#signin-why")).to_have_text(re.compile("not accepted"))
        await expect(signin).to_be_visible()

        await page.get_by_label("API token").fill(cluster.token)
        await page.get_by_role("button", name="Use this token").click()
        await expect(signin).to_be_hidden()
        await expect(page.locator("[data-state-count='succeeded'] .card-value")).to_have_text("0")
        await expect(page.locator(".regions-table tr[data-region='east']")).to_be_visible()
        await expect(page.locator("#live")).to_have_attribute("data-mode", "events")
        await page.evaluate("window.sameDocument = true")

        await page.get_by_role("link", name="Tasks", exact=True).click()
        await expect(page.locator("body"), f"page errors: {errors}").to_have_attribute(
            "data-view", "tasks")
        await expect(page.locator(".empty")).to_have_text("No tasks.")
        created = await c.create(kind="shell", command="echo behind a token")
        row = page.locator(f"tr[data-task-id='{created['id']}']")
        await expect(row.locator(".badge")).to_have_text("succeeded")
        await row.locator("a.task-link").click()
        await expect(page.locator(f".task-page[data-task-id='{created['id']}'] .output")
                     ).to_have_text("behind a token\n")
        assert await page.evaluate("window.sameDocument") is True
        assert await page.evaluate("sessionStorage.getItem('strata.token')") == cluster.token
        await expect(signin).to_be_hidden()  # asked once: never again with a good token

        assert not [r.url for r in requests if cluster.token in r.url]
        streams = [r for r in requests if r.url.startswith(cluster.api + "/v1/events")]
        sent = [r for r in streams if r.resource_type == "fetch"]
        assert sent, [(r.url, r.resource_type) for r in streams]
        assert (await sent[-1].all_headers())["authorization"] == f"Bearer {cluster.token}"
        calls = [r for r in requests if r.url.startswith(cluster.api + "/v1/tasks")]
        sent_with = [(await r.all_headers()).get("authorization") for r in calls[-3:]]
        assert sent_with and set(sent_with) == {f"Bearer {cluster.token}"}, sent_with
    assert errors == [], errors
