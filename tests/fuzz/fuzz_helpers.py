"""What every fuzz property checks, whatever the input: a typed one-line error or success, under a
time limit, with bounded memory.

The properties run with fixed seeds (``derandomize``), so CI runs the same cases every time and a
failure replays; the number of cases each one runs is recorded in README.md (measured with
``pytest tests/fuzz --hypothesis-show-statistics``).
"""

from __future__ import annotations

import contextlib
import resource
import signal
import threading

from hypothesis import HealthCheck, settings

MEMORY_LIMIT = 1 << 30  # bytes of new peak RSS a property may cause
PER_CASE_S = 10.0  # a case still running after this long is a hang


def fuzz_settings(max_examples: int) -> settings:
    """Deterministic, bounded hypothesis settings (the per-case time limit is :func:`bounded`'s)."""
    return settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much],
                    print_blob=True)


class Hang(BaseException):
    """Raised into a case that ran past its time limit (a BaseException: no ``except Exception``
    in the code under test can swallow it)."""


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def bounded(seconds: float = PER_CASE_S):
    """Run the block under a time limit (SIGALRM raises :class:`Hang` into it, which also interrupts
    a blocking system call) and check that it raised the process's peak RSS by at most
    :data:`MEMORY_LIMIT` over the RSS it started with."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("bounded() needs the main thread (signals)")
    start_rss, start_peak = current_rss(), peak_rss()

    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    peak = peak_rss()
    if peak > start_peak:  # a new peak was reached inside the block
        assert peak - start_rss <= MEMORY_LIMIT, f"peak RSS grew by {(peak - start_rss) / 2 ** 20:.0f} MiB"


def assert_one_line(error: BaseException) -> None:
    """A typed error's message is one non-empty line."""
    text = str(error)
    assert text.strip() and "\n" not in text.strip(), repr(text)
