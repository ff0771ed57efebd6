"""``@strata.task`` and the bodies of the tasks that call a handler: what a worker can
find by its name is a handler, and nothing else is."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import strata
from strata.client import HandlerError, parent_results, python_task
from strata.client.handlers import TaskDefaults, defaults_of, handler_name, task_body

HERE = "tests.unit.test_sdk_handlers"


@strata.task
def double(x: int) -> int:
    return 2 * x


@strata.task(max_attempts=3, timeout_s=30, priority=5, region="east", concurrency_key="etl")
async def fetch(day: str, parent_outputs: dict[str, str | None] | None = None) -> str:
    return day


def plain(x: int) -> int:
    return x


@strata.task
def stand_in(x: int) -> int:
    return x


class Jobs:
    def run(self) -> None:
        pass


at_top = lambda: 1  # noqa: E731  (a lambda has no name of its own, even at the top level)


def test_the_decorator_gives_back_the_function_itself() -> None:
    assert double(21) == 42
    assert double.__name__ == "double" and inspect.signature(double).parameters["x"]
    assert defaults_of(double) == TaskDefaults()
    assert defaults_of(plain) is None
    # A worker awaits an async handler: it must still look like one.
    assert inspect.iscoroutinefunction(fetch)
    assert defaults_of(fetch) == TaskDefaults(max_attempts=3, timeout_s=30, priority=5,
                                              region="east", concurrency_key="etl")
    assert strata.task is strata.client.task


def test_a_handler_is_named_by_its_module_and_name() -> None:
    assert handler_name(double) == f"{HERE}:double"
    assert handler_name(fetch) == f"{HERE}:fetch"


def test_a_call_is_a_python_task_with_the_handlers_defaults() -> None:
    assert python_task(double, x=4) == {"kind": "python", "handler": f"{HERE}:double",
                                        "args": {"x": 4}}
    assert python_task(double, 4) == {"kind": "python", "handler": f"{HERE}:double",
                                      "args": [4]}
    assert python_task(double) == {"kind": "python", "handler": f"{HERE}:double", "args": {}}
    assert python_task(fetch, day="2030-01-01") == {
        "kind": "python", "handler": f"{HERE}:fetch", "args": {"day": "2030-01-01"},
        "max_attempts": 3, "timeout_s": 30, "priority": 5, "region": "east",
        "concurrency_key": "etl"}
    with pytest.raises(HandlerError, match="positional or keyword arguments, not both"):
        python_task(double, 1, x=2)


def test_what_submit_sends_for_a_kind_or_a_handler() -> None:
    assert task_body("shell", command="echo hi", priority=2) == {
        "kind": "shell", "command": "echo hi", "priority": 2}
    assert task_body("noop", options={"run_at": "2030-01-01T00:00:00Z"}) == {
        "kind": "noop", "run_at": "2030-01-01T00:00:00Z"}
    # Options win over the decorator's defaults; the handler's args stay its own.
    assert task_body(fetch, day="d", options={"priority": 9, "depends_on": ["a"]}) == {
        "kind": "python", "handler": f"{HERE}:fetch", "args": {"day": "d"},
        "max_attempts": 3, "timeout_s": 30, "priority": 9, "region": "east",
        "concurrency_key": "etl", "depends_on": ["a"]}
    with pytest.raises(HandlerError, match="its fields go by name"):
        task_body("shell", "echo hi")
    with pytest.raises(HandlerError, match="not a kind's name nor a handler"):
        task_body(42)  # type: ignore[arg-type]


def test_a_function_not_marked_is_not_a_handler() -> None:
    with pytest.raises(HandlerError, match=r"handler plain is not marked as a handler: "
                                           r"decorate it with @strata\.task"):
        python_task(plain, 1)


def test_a_nested_function_is_refused_when_decorated() -> None:
    with pytest.raises(HandlerError, match="is defined inside another function"):
        @strata.task
        def inner() -> None:
            pass


def test_a_lambda_and_a_method_are_refused() -> None:
    with pytest.raises(HandlerError, match="handler <lambda> is not at the top level"):
        strata.task(at_top)
    with pytest.raises(HandlerError, match=r"handler Jobs\.run is not at the top level"):
        strata.task(Jobs.run)
    with pytest.raises(HandlerError, match="is defined inside another function"):
        strata.task(lambda: 1)


def test_defaults_are_checked_as_the_api_would() -> None:
    with pytest.raises(HandlerError, match="max_attempts"):
        strata.task(max_attempts=0)
    with pytest.raises(HandlerError, match="timeout_s"):
        strata.task(timeout_s=-1)
    with pytest.raises(HandlerError, match="region"):
        strata.task(region="not a region!")


def test_a_name_that_now_means_another_function_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = double
    monkeypatch.setattr(sys.modules[__name__], "double", stand_in)
    with pytest.raises(HandlerError, match=rf"{HERE}\.double is not this function"):
        handler_name(original)


def test_parent_results_reads_each_parents_json() -> None:
    assert parent_results({"a": '{"rows": 2}', "b": "[1, 2]", "c": None}) == {
        "a": {"rows": 2}, "b": [1, 2], "c": None}
    with pytest.raises(ValueError, match="the output of parent a is not JSON: 'hello"):
        parent_results({"a": "hello\n"})


JOBS = '''
import strata
from strata.client import python_task

@strata.task
def build(day):
    return day

if __name__ == "__main__":
    print(python_task(build, day="d")["handler"])
'''


def _run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})


def test_a_handler_in_a_script_is_refused_but_one_run_with_dash_m_is_its_module(
        tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "__init__.py").write_text("")
    (tmp_path / "jobs" / "nightly.py").write_text(JOBS)
    (tmp_path / "jobs" / "__main__.py").write_text(JOBS)
    as_module = _run(tmp_path, "-m", "jobs.nightly")
    assert (as_module.returncode, as_module.stdout) == (0, "jobs.nightly:build\n"), \
        as_module.stderr
    for argv in (["jobs/nightly.py"], ["-m", "jobs"]):  # a script; a package's __main__
        as_script = _run(tmp_path, *argv)
        assert as_script.returncode == 1, (argv, as_script.stdout)
        assert ("HandlerError: handler build is defined in the script being run (__main__)"
                in as_script.stderr), as_script.stderr


def test_import_strata_imports_nothing_of_the_sdk_until_strata_task() -> None:
    probe = textwrap.dedent("""
        import sys
        import strata
        assert not any(m.startswith(("strata.client", "aiohttp", "pydantic"))
                       for m in sys.modules), sorted(sys.modules)
        assert "task" in dir(strata)
        decorator = strata.task
        assert "strata.client.handlers" in sys.modules
        assert decorator is sys.modules["strata.client.handlers"].task
        try:
            strata.nothing_of_that_name
        except AttributeError as exc:
            assert "nothing_of_that_name" in str(exc)
        else:
            raise AssertionError("no AttributeError")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
