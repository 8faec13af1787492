"""Starting a local Ray, or joining a cluster, for one scoring run; offline and quiet.

Local start (no ``--ray-address``): ``ray.init`` with the dashboard off (it is a web server and
nothing here needs it), usage statistics off, and Ray's token authentication on:

* Ray 2.59 and later turn token authentication on for a new local cluster when ``RAY_AUTH_MODE``
  is unset (``ray.init`` sets ``RAY_AUTH_MODE=token`` in the process and refreshes its
  configuration), and take the token from ``RAY_AUTH_TOKEN``, then ``RAY_AUTH_TOKEN_PATH``, then
  ``~/.ray/auth_token``, writing a new one there when there is none (which fails on a read-only
  home). edgereg keeps that default and hands Ray a random token through ``RAY_AUTH_TOKEN`` (one
  per process: Ray caches the token it loaded), so the cluster's ports still refuse strangers,
  nothing is written to the home directory, and the variables are restored after the run. A
  ``RAY_AUTH_MODE`` (``disabled`` included), ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` the user
  set is respected as it is.

Joining (``--ray-address ADDR``, or ``auto`` for the cluster this machine belongs to): the cluster's
own settings rule. A cluster started with token authentication needs ``RAY_AUTH_MODE=token`` and
its token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, or ``ray get-auth-token`` on the head node
to fetch ``~/.ray/auth_token``); without them the error says so in one line.

A Ray that is already initialised in the process (a notebook, a test session) is used as it is
and left running.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from edgereg.errors import EdgeregError, require_extra

AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def import_ray():
    """``ray`` with Ray Data, or MissingExtraError naming ``pip install 'edgereg[cluster]'``."""
    require_extra("ray.data", "cluster")
    import ray

    return ray


@contextmanager
def _environment(updates: dict[str, str], *, restore: tuple[str, ...] = ()) -> Iterator[None]:
    """Set environment variables for the block (Ray reads them, and hands them to its processes).

    ``restore`` names variables Ray itself may set during the block, to be put back afterwards.
    """
    saved = {name: os.environ.get(name) for name in (*updates, *restore)}
    os.environ.update(updates)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@functools.cache
def _process_token() -> str:
    """A random token for the local clusters this process starts (Ray caches the first it loads)."""
    return secrets.token_hex(32)


def local_auth_environment() -> dict[str, str]:
    """The token a local start hands Ray, unless the user configured authentication."""
    if any(name in os.environ for name in AUTH_ENV):
        return {}
    return {"RAY_AUTH_TOKEN": _process_token()}


def quiet_ray_data_console() -> None:
    """Keep Ray Data's INFO/WARNING lines off the console (they stay in the session's log files).

    ``edgereg infer`` prints its own progress and summary; Ray Data otherwise prints a line per
    dataset execution and a hint about its disabled progress bars.
    """
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                num_gpus: int | None = None) -> Iterator[object]:
    """Yield the ``ray`` module connected to a cluster for the duration of the block.

    Args:
        address: None starts a local Ray on this machine (stopped at the end); ``"auto"`` or
            ``"host:port"`` (or ``ray://host:10001``) joins an existing cluster.
        num_cpus: CPUs of a local start (None: all of this machine's).
        num_gpus: GPUs of a local start (None: those Ray detects).

    Raises:
        MissingExtraError: Ray Data is not installed.
        EdgeregError: the cluster cannot be reached or refuses the connection, with the fix.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    environment = {"RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    if address is None:
        environment.update(local_auth_environment())
    with _environment(environment, restore=AUTH_ENV):
        _init(ray, address, num_cpus, num_gpus)
        try:
            quiet_ray_data_console()
            yield ray
        finally:
            ray.shutdown()


def _init(ray, address: str | None, num_cpus: int | None, num_gpus: int | None) -> None:
    options = dict(logging_level=logging.WARNING, log_to_driver=False)
    # Ray announces its token-auth default on every local start; the module docstring says it here
    auth_logger = logging.getLogger("ray._private.authentication")
    level = auth_logger.level
    auth_logger.setLevel(logging.ERROR)
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except Exception as exc:
        raise EdgeregError(_connect_error(address, exc)) from None
    finally:
        auth_logger.setLevel(level)


def _connect_error(address: str | None, exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if address is None:
        return f"could not start a local Ray ({text}); see `ray start --head` for details, or use --engine local"
    if "auth" in text.lower() or "token" in text.lower():
        return (f"the Ray cluster at {address!r} wants a token ({text}); export RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH; `ray get-auth-token` on the head node prints it)")
    return (f"could not join the Ray cluster at {address!r} ({text}); check the address (`ray status` on "
            "the head node) or leave --ray-address out to start a local Ray")
