"""pytest plugin for mutation runs (``tools/mutants.py`` loads it with ``-p``): quick tests first.

mutmut runs each mutant's tests with ``-x`` in no useful order, and a mutant is usually killed by
the first test that looks at the code it changed, so running the cheapest tests first makes killed
mutants cheap. In mutmut's first pass (``MUTANT_UNDER_TEST=stats``) this plugin records each test's
setup + call + teardown time, fixtures included (mutmut's own figures count the call only), in
``fast_first_times.json`` in mutmut's working folder; later runs read it. Tests stay grouped by
file, so module-scoped fixtures are still built once: files are ordered by their total time, tests
inside a file by their own. Without the file nothing moves. Failures of the first pass (mutmut
stops when the unmutated code fails a test, without saying which) go to ``first_pass_failures.txt``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

TIMES = Path("fast_first_times.json")
FAILURES = Path("first_pass_failures.txt")  # mutmut hides the output of its first pass; this keeps it
_measured: dict[str, float] = defaultdict(float)


def _recording() -> bool:
    return os.environ.get("MUTANT_UNDER_TEST") == "stats"


def pytest_runtest_logreport(report) -> None:
    if _recording():
        _measured[report.nodeid] += report.duration
        if report.failed:
            with FAILURES.open("a", encoding="utf-8") as out:
                out.write(f"FAILED {report.nodeid} ({report.when})\n{report.longreprtext[-3000:]}\n\n")


def pytest_sessionfinish(session) -> None:
    if _recording() and _measured:
        TIMES.write_text(json.dumps(_measured), "utf-8")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list) -> None:
    if _recording():
        return
    try:
        times = json.loads(TIMES.read_text("utf-8"))
    except (OSError, ValueError):
        return

    def file_of(item) -> str:
        return item.nodeid.split("::")[0]

    per_file: dict[str, float] = defaultdict(float)
    for item in items:
        per_file[file_of(item)] += times.get(item.nodeid, 0.0)
    items.sort(key=lambda item: (per_file[file_of(item)], file_of(item), times.get(item.nodeid, 0.0)))
