"""``[[schedules]]`` in a topology file: checked as the master checks a POST
/v1/schedules body when the file is loaded (naming the file and the entry), rendered by
``strata compose`` without them, and applied by ``strata up``: made, or changed to match."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from strata.common.client import ApiError
from strata.common.errors import ConfigError, InvalidInput
from strata.deploy.compose import render
from strata.local.up import ScheduleRefused, apply_schedules
from strata.topologies.topology import TOPOLOGY_DIR, Topology, load, parse

REGIONS = """
[[regions]]
name = "r1"
grpc_port = 6000
"""


def topology(schedules: str) -> Topology:
    return parse(schedules + "\n" + REGIONS, "lab.toml")


def error(schedules: str) -> str:
    with pytest.raises(ConfigError) as info:
        topology(schedules)
    message = str(info.value)
    assert message.startswith("lab.toml: "), message
    return message


def test_the_shipped_example_loads_and_renders():
    t = load(TOPOLOGY_DIR / "with-schedules.toml")
    assert [(s.name, s.every_s, s.cron, s.paused) for s in t.schedules] == [
        ("heartbeat", 60.0, None, False), ("nightly-report", None, "0 3 * * *", True)]
    assert t.schedules[1].task["region"] == "region-a"
    assert "heartbeat" not in render(t)  # processes only: `strata up` applies schedules


def test_a_schedule_takes_the_post_body_fields_and_toml_date_times():
    t = topology("""
[[schedules]]
name = "nightly"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
overlap = "cancel_previous"
catchup = "all"
start_at = 2030-01-01T00:00:00Z
end_at = "2031-01-01T00:00:00Z"
[schedules.task]
kind = "shell"
command = "backup.sh"
region = "r1"
""")
    (s,) = t.schedules
    assert (s.overlap, s.catchup, s.timezone) == ("cancel_previous", "all", "Europe/Berlin")
    assert s.start_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert s.end_at == datetime(2031, 1, 1, tzinfo=UTC)
    assert s.model_fields_set == {"name", "cron", "timezone", "overlap", "catchup",
                                  "start_at", "end_at", "task"}


def test_none_is_fine():
    assert topology("").schedules == []


@pytest.mark.parametrize("schedules, says", [
    ('[[schedules]]\nname = "n"\ncron = "0 3 * *"\ntask = { kind = "noop" }',
     "schedules[0] (n): cron: not a cron expression"),
    ('[[schedules]]\nname = "n"\ntask = { kind = "noop" }',
     "schedules[0] (n): body: give cron or every_s, one of the two"),
    ('[[schedules]]\nname = "n"\nevery_s = 0.5\ntask = { kind = "noop" }',
     "schedules[0] (n): every_s: Input should be greater than or equal to 1"),
    ('[[schedules]]\nname = "n"\nevery_s = 5\ntimezone = "Mars/Olympus"\n'
     'task = { kind = "noop" }', "schedules[0] (n): timezone: unknown time zone"),
    ('[[schedules]]\nname = "n"\nevery_s = 5\ntask = { kind = "nope" }',
     "schedules[0] (n): task: kind: unknown kind 'nope'"),
    ('[[schedules]]\nname = "n"\nevery_s = 5\n'
     'task = { kind = "noop", run_at = "2030-01-01T00:00:00Z" }',
     "schedules[0] (n): task: run_at: a schedule's task has none"),
    ('[[schedules]]\nname = "n"\nevery_s = 5\noverlap = "never"\ntask = { kind = "noop" }',
     "schedules[0] (n): overlap: "),
    ('[[schedules]]\nname = "n"\nevery_s = 5\nwhen = "often"\ntask = { kind = "noop" }',
     "schedules[0] (n): when: Extra inputs are not permitted"),
    ('[[schedules]]\nname = "bad name"\nevery_s = 5\ntask = { kind = "noop" }',
     "schedules[0] (bad name): name: String should match pattern"),
    ('[[schedules]]\nevery_s = 5\ntask = { kind = "noop" }', "schedules[0]: name: Field required"),
    ('schedules = ["n"]', "schedules[0]: a schedule must be a table"),
    ('[[schedules]]\nname = "n"\nevery_s = 5\ntask = { kind = "noop" }\n'
     '[[schedules]]\nname = "n"\ncron = "* * * * *"\ntask = { kind = "noop" }',
     "schedule names must be unique; repeated: n"),
    ('[[schedules]]\nname = "n"\nevery_s = 5\ntask = { kind = "noop", region = "r9" }',
     "schedule n: task.region: no region named 'r9' in this topology"),
])
def test_a_bad_schedule_is_refused_naming_the_file_and_the_entry(schedules: str, says: str):
    assert says in error(schedules)


def test_a_bad_schedule_is_refused_by_load_too(tmp_path: Path):
    path = tmp_path / "lab.toml"
    path.write_text(REGIONS + '[[schedules]]\nname = "n"\ncron = "nope"\ntask = {kind = "noop"}')
    with pytest.raises(ConfigError, match=rf"^{path}: schedules\[0\] \(n\): cron: "):
        load(path)


class FakeMaster:
    """The schedule routes of the API, over a dict."""

    def __init__(self, existing: dict[str, dict[str, Any]] | None = None,
                 refuse: str | None = None) -> None:
        self.schedules = dict(existing or {})
        self.asked: list[tuple[str, str, dict[str, Any]]] = []
        self.refuse = refuse

    async def create_schedule(self, **spec: Any) -> dict[str, Any]:
        self.asked.append(("create", spec["name"], spec))
        if self.refuse:
            raise InvalidInput(self.refuse)
        if spec["name"] in self.schedules:
            raise ApiError(409, "conflict", f"a schedule named {spec['name']!r} exists already")
        self.schedules[spec["name"]] = spec
        return spec

    async def change_schedule(self, name: str, **changes: Any) -> dict[str, Any]:
        self.asked.append(("change", name, changes))
        self.schedules[name] = {**self.schedules[name], **changes}
        return self.schedules[name]


TWO = """
[[schedules]]
name = "fresh"
every_s = 5
task = { kind = "noop" }
[[schedules]]
name = "kept"
cron = "*/5 * * * *"
overlap = "skip"
task = { kind = "shell", command = "echo new" }
"""


async def test_up_creates_each_and_changes_one_that_exists_to_the_file():
    master = FakeMaster({"kept": {"name": "kept", "every_s": 60.0, "paused": True,
                                  "catchup": "all", "task": {"kind": "noop"}}})
    said = await apply_schedules(master, topology(TWO))  # type: ignore[arg-type]
    assert said == ["schedule fresh: created", "schedule kept: updated to the topology's"]
    assert [(what, name) for what, name, _ in master.asked] == [
        ("create", "fresh"), ("create", "kept"), ("change", "kept")]
    created = master.asked[0][2]
    assert (created["every_s"], created["cron"], created["task"]) == (5.0, None, {"kind": "noop"})
    # Every field but the name, defaults included (a field left out of the file is its
    # default again); paused only when the file says it, so a pause made since is kept.
    changes = master.asked[2][2]
    assert changes == {"cron": "*/5 * * * *", "every_s": None, "timezone": "UTC",
                       "start_at": None, "end_at": None, "overlap": "skip", "catchup": "none",
                       "task": {"kind": "shell", "command": "echo new"}}
    assert master.schedules["kept"]["paused"] is True


async def test_up_sets_paused_when_the_file_says_it():
    master = FakeMaster({"p": {"name": "p", "paused": True}})
    await apply_schedules(master, topology(  # type: ignore[arg-type]
        '[[schedules]]\nname = "p"\nevery_s = 5\npaused = false\ntask = { kind = "noop" }'))
    assert master.asked[-1][2]["paused"] is False


async def test_a_schedule_the_master_refuses_names_it():
    master = FakeMaster(refuse="task: region: no region named 'r1'")
    with pytest.raises(ScheduleRefused, match=r"^schedule fresh of topology 'lab': task: region"):
        await apply_schedules(master, topology(TWO))  # type: ignore[arg-type]
