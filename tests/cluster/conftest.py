"""One local Ray for every test that needs one (starting Ray costs seconds).

``edgereg infer --engine ray`` run through ``main()`` in these tests finds this Ray initialised and
uses it as it is. Tests that start their own (a driver in a subprocess) start a second local Ray,
which does not disturb this one.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_ray():
    pytest.importorskip("ray.data", reason="the cluster extra is not installed: pip install 'edgereg[cluster]'")
    from edgereg.cluster.session import ray_session

    with ray_session(num_cpus=2) as ray:  # 2 logical CPUs whatever the machine: the same plan everywhere
        yield ray
