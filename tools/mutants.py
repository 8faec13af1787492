"""Mutation testing (``make mutants``): how many small planted bugs the test suite catches.

mutmut (pinned in the ``dev`` extra) rewrites each function of a module into many one-token
variants ("mutants": ``<`` for ``<=``, ``+ 1`` for ``+ 2``, a dropped argument, ``None`` for a
value, ...) and runs, for each mutant, the tests that call that function. A mutant that makes a test
fail is *killed*; one that passes every test *survived*: a bug of that shape would ship unnoticed.
``docs/mutants.md`` explains the run and lists the surviving mutants that are equivalent (no input
can tell them from the original), each with the reason.

The modules and the test files that target each of them are the ``[tool.edgereg.mutants]`` table of
``pyproject.toml``; the mutmut settings they share are ``[tool.mutmut]``. Inside a module's test
files mutmut selects, per function, the tests that call it (measured in one first pass).

Why staging copies: the installed package maps ``edgereg.export`` to ``export/`` and
``edgereg.training`` to ``training/`` (setuptools ``package-dir``). mutmut copies the sources into
``mutants/``, puts that folder first on ``sys.path`` and names each mutant after its file path; in
the split layout ``edgereg.export`` would still be imported, unmutated, through the editable-install
finder. So each module runs in its own copy of the project laid out as installed
(``.mutmut/<module>/edgereg/export``, ``.../edgereg/training``, plus ``tests/`` and the other files);
the working tree is never modified. ``PYTHONPATH`` names the mutated copy so that tests which start
``python -m edgereg ...`` subprocesses run the mutant too.

Each run starts from scratch (mutmut's cache would keep the verdicts of survivors after the tests
change). Mutants run under ``nice`` (the Makefile), ``--jobs`` at a time, each with a CPU-time limit
derived from its tests' measured time (``timeout_multiplier``, ``timeout_constant``).

Usage: ``python tools/mutants.py [--jobs N] [--deselect TEST_ID] [MODULE ...]`` with MODULE a key of
``[tool.edgereg.mutants]`` (default: all). Prints the score per module and overall; the surviving
mutants and their diffs go to ``.mutmut/survivors.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutmut"
EQUIVALENTS_DOC = ROOT / "docs" / "mutants.md"

# mutmut's exit-code convention for a mutant's test run (mutmut/stats.py)
KILLED_CODES = {1, 3}  # a test failed, or pytest failed internally because of the mutant
TIMEOUT_CODES = {-24, 24, 152, 255, 36, -9}  # SIGXCPU, then SIGKILL: past the mutant's CPU-time limit
CRASH_CODES = {-11, -6, -7, -8}  # SIGSEGV, SIGABRT, SIGBUS, SIGFPE: the mutant crashed the test process
SURVIVED_CODES = {0}
NO_TESTS_CODES = {5, 33}  # no selected test calls the function
SPINNER = tuple("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")


@dataclass
class Tally:
    """Verdicts of one module's mutants."""

    killed: int = 0
    crashed: int = 0
    timeout: int = 0
    survived: int = 0
    no_tests: int = 0
    other: int = 0  # not run, interrupted or crashed (segfault, suspicious)
    not_killed: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.killed + self.crashed + self.timeout + self.survived + self.no_tests + self.other

    @property
    def detected(self) -> int:
        """Mutants the tests caught: a failed test, a crash or a timeout (each fails the test run)."""
        return self.killed + self.crashed + self.timeout

    def count(self, name: str, code: int | None) -> None:
        if code in KILLED_CODES:
            self.killed += 1
            return
        if code in CRASH_CODES:
            self.crashed += 1
            return
        if code in TIMEOUT_CODES:
            self.timeout += 1
            return
        if code in SURVIVED_CODES:
            self.survived += 1
        elif code in NO_TESTS_CODES:
            self.no_tests += 1
        else:
            self.other += 1
        self.not_killed.append(name)

    def add(self, other: Tally) -> None:
        for name in ("killed", "crashed", "timeout", "survived", "no_tests", "other"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.not_killed += other.not_killed


def load_config() -> tuple[dict[str, list[str]], dict[str, str]]:
    """``{module glob: [test files]}`` from ``[tool.edgereg.mutants]`` and the ``package-dir`` map."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    package_dir = project["tool"]["setuptools"].get("package-dir", {})
    return project["tool"]["edgereg"]["mutants"], package_dir


def project_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files (what a clone plus local edits holds)."""
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             check=True, capture_output=True).stdout.decode()
    return [name for name in listing.split("\0") if name and (ROOT / name).is_file()]


def staged_path(name: str, package_dir: dict[str, str]) -> str:
    """Where a repository file lives in the installed layout
    (``export/int8/gate.py`` -> ``edgereg/export/int8/gate.py``)."""
    for package, folder in sorted(package_dir.items(), key=lambda item: -len(item[1])):
        prefix = folder.rstrip("/") + "/"
        if folder not in ("", ".") and name.startswith(prefix):
            return package.replace(".", "/") + "/" + name[len(prefix):]
    return name


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def build_stage(stage: Path, files: list[str], package_dir: dict[str, str], module: str, tests: list[str],
                deselect: list[str]) -> None:
    """A copy of the project in the installed layout whose mutmut settings name one module and its tests."""
    for name in files:
        target = stage / staged_path(name, package_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    # PYTHONPATH names the mutated copy; it must exist before Python starts, or the import system
    # caches it as missing and the tests would import the unmutated package instead
    (stage / "mutants").mkdir()
    pyproject = stage / "pyproject.toml"
    per_module = (f"only_mutate = {toml_list([module])}\n"
                  f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n")
    text, headers = re.subn(r"^\[tool\.mutmut\]\n", lambda m: m.group(0) + per_module,
                            pyproject.read_text("utf-8"), flags=re.M)
    extra = "".join(f'"--deselect", {json.dumps(test)}, ' for test in deselect)
    text, lists = re.subn(r"^pytest_add_cli_args = \[", lambda m: m.group(0) + extra, text, flags=re.M)
    if headers != 1 or lists != 1:
        raise SystemExit("pyproject.toml: expected one [tool.mutmut] table with a 'pytest_add_cli_args = [' line")
    pyproject.write_text(text, "utf-8")


def run_mutmut(stage: Path, jobs: int, log: Path) -> int:
    env = dict(os.environ, PYTHONPATH=str(stage / "mutants"))
    env.pop("MUTANT_UNDER_TEST", None)
    with log.open("w") as out:
        return subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)],
                              cwd=stage, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def log_tail(log: Path, lines: int = 20) -> str:
    """The last lines of a mutmut log, without its spinner frames."""
    text = log.read_text("utf-8", errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(SPINNER)]
    return "\n".join(kept[-lines:])


def verdicts(stage: Path) -> dict[str, int | None]:
    """mutant name -> mutmut's exit code (None: not run) for every mutant of a stage."""
    out: dict[str, int | None] = {}
    for meta in sorted((stage / "mutants").rglob("*.py.meta")):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def documented_equivalents() -> set[str]:
    """Mutant names listed in docs/mutants.md (each with the reason it cannot be told apart)."""
    if not EQUIVALENTS_DOC.is_file():
        return set()
    return set(re.findall(r"`(edgereg\.[\w.ǁ]+__mutmut_\d+)`", EQUIVALENTS_DOC.read_text("utf-8")))


def mutant_diff(stage: Path, name: str) -> str:
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=stage, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(stage / "mutants")))
    return shown.stdout.strip() or shown.stderr.strip()[-500:]


def slug(module: str) -> str:
    return re.sub(r"[^\w]+", "_", module.removesuffix(".py").removesuffix("*")).strip("_")


def percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:5.1f}%" if whole else "    -"


def run_module(module: str, tests: list[str], files: list[str], package_dir: dict[str, str],
               args: argparse.Namespace) -> tuple[Tally, Path]:
    stage = WORK / slug(module)
    build_stage(stage, files, package_dir, module, tests, args.deselect)
    log = WORK / "logs" / f"{slug(module)}.log"
    for attempt in (1, 2):  # a timing test can fail once on a loaded machine; mutmut needs a green first pass
        code = run_mutmut(stage, args.jobs, log)
        codes = verdicts(stage)
        if code == 0 or any(c is not None for c in codes.values()):
            break
        failures = stage / "mutants" / "first_pass_failures.txt"
        details = failures.read_text("utf-8")[-4000:] if failures.is_file() else ""
        print(f"{module}: mutmut exited {code} before testing any mutant (attempt {attempt}):\n{log_tail(log)}\n"
              f"{details}", file=sys.stderr, flush=True)
        if failures.is_file():
            failures.unlink()
    tally = Tally()
    for name, c in sorted(codes.items()):
        tally.count(name, c)
    return tally, stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="keys of [tool.edgereg.mutants] to run (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--deselect", action="append", default=[], metavar="TEST_ID",
                        help="leave out a test that fails on the unmutated code (mutmut needs a green suite)")
    args = parser.parse_args(argv)
    # Some tests press Ctrl-C on a subprocess. A shell starts background jobs with SIGINT ignored,
    # and an ignored signal stays ignored in every child, so those tests would hang: restore it.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    targets, package_dir = load_config()
    unknown = [m for m in args.modules if m not in targets]
    if unknown:
        parser.error(f"not in [tool.edgereg.mutants]: {', '.join(unknown)}; choose from {', '.join(targets)}")
    selected = args.modules or list(targets)

    start = time.monotonic()
    if WORK.exists():
        shutil.rmtree(WORK)
    (WORK / "logs").mkdir(parents=True)
    files = project_files()
    print(f"mutmut, one copy per module in {WORK.relative_to(ROOT)}/, {args.jobs} job(s); "
          f"logs in {WORK.relative_to(ROOT)}/logs/", flush=True)

    overall = Tally()
    rows = []
    stage_of: dict[str, Path] = {}
    for module in selected:
        began = time.monotonic()
        tally, stage = run_module(module, targets[module], files, package_dir, args)
        overall.add(tally)
        stage_of.update({name: stage for name in tally.not_killed})
        rows.append((module, tally, time.monotonic() - began))
        print(f"{module:30s} {tally.detected:5d} of {tally.total:<5d} killed {percent(tally.detected, tally.total)}"
              f"  [{time.monotonic() - began:6.0f} s]", flush=True)

    equivalents = documented_equivalents()
    listed = [name for name in overall.not_killed if name in equivalents]
    print()
    print(f"{'module':30s} {'mutants':>7s} {'killed':>6s} {'crashed':>7s} {'timeout':>7s} {'survived':>8s} "
          f"{'no tests':>8s} {'other':>5s}  {'score':>6s}  {'minutes':>7s}")
    for module, t, seconds in rows + [("overall", overall, time.monotonic() - start)]:
        print(f"{module:30s} {t.total:7d} {t.killed:6d} {t.crashed:7d} {t.timeout:7d} {t.survived:8d} "
              f"{t.no_tests:8d} {t.other:5d}  {percent(t.detected, t.total)}  {seconds / 60:7.1f}")
    print(f"\nmutation score: {percent(overall.detected, overall.total).strip()} of {overall.total} mutants killed; "
          f"{len(overall.not_killed)} not killed, {len(listed)} of them listed as equivalent in docs/mutants.md; "
          f"{(time.monotonic() - start) / 60:.0f} min in all")

    report = WORK / "survivors.txt"
    with report.open("w") as out:
        for name in overall.not_killed:
            tag = "equivalent (docs/mutants.md)" if name in equivalents else "NOT KILLED"
            out.write(f"### {name}  [{tag}]\n{mutant_diff(stage_of[name], name)}\n\n")
    unlisted = [name for name in overall.not_killed if name not in equivalents]
    if unlisted:
        print(f"{len(unlisted)} mutant(s) neither killed nor listed as equivalent; diffs in "
              f"{report.relative_to(ROOT)}:")
        for name in unlisted:
            print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
