"""Sizing the actor pool from the cluster's resources: no plan may starve the decode tasks."""

from __future__ import annotations

import pytest

from edgereg.cluster.plan import (
    DECODE_TASK_CPUS,
    MIN_DECODE_CPUS,
    ClusterResources,
    plan_resources,
    provider_names,
    wants_gpu,
)
from edgereg.errors import EdgeregError


def leaves_decoders_a_cpu(plan, resources):
    reserved = plan.max_actors * plan.actor_cpus
    return resources.cpus - reserved >= min(MIN_DECODE_CPUS, resources.cpus / 2) and plan.decode_cpus > 0


@pytest.mark.parametrize("cpus", [0.5, 1, 2, 3, 4, 8, 64])
@pytest.mark.parametrize("threads", [None, 1, 2])
def test_defaults_never_hold_every_cpu(cpus, threads):
    resources = ClusterResources(cpus=cpus)
    try:
        plan = plan_resources(resources, threads=threads)
    except EdgeregError as exc:  # an explicit --threads that cannot fit is refused, never planned
        assert threads is not None and "would hold" in str(exc)
        return
    assert leaves_decoders_a_cpu(plan, resources)
    assert plan.actor_cpus != plan.decode_cpus  # equal requests would let Ray Data fuse the two stages
    assert not plan.uses_gpu and plan.min_actors >= 1


def test_defaults_give_half_the_cpus_to_autoscaled_actors():
    plan = plan_resources(ClusterResources(cpus=16))
    assert (plan.min_actors, plan.max_actors, plan.actor_cpus, plan.threads) == (1, 8, 1.0, 1)
    assert plan.decode_cpus == DECODE_TASK_CPUS and plan.note == ""
    plan = plan_resources(ClusterResources(cpus=16), threads=4)
    assert (plan.max_actors, plan.actor_cpus, plan.threads) == (2, 4.0, 4)


def test_one_cpu_shares_it_instead_of_hanging():
    # the observed hang: one CPU, one actor holding it, decode tasks never scheduled
    plan = plan_resources(ClusterResources(cpus=1))
    assert plan.max_actors == 1 and plan.actor_cpus == 0.5 and plan.decode_cpus == 0.25
    assert "share" in plan.note


@pytest.mark.parametrize("cpus, actors, threads, fix", [
    (1, 1, 1, "leave --actors/--threads out"),
    (2, 2, 1, "use --actors 1"),
    (4, 2, 2, "use --actors 1"),
    (4, 1, 4, "use --threads 3"),
])
def test_explicit_pools_that_starve_the_decoders_are_refused(cpus, actors, threads, fix):
    with pytest.raises(EdgeregError) as info:
        plan_resources(ClusterResources(cpus=cpus), actors=actors, threads=threads)
    message = str(info.value)
    assert "would hold" in message and "hang" in message and fix in message and "\n" not in message


def test_explicit_pool_that_fits_is_fixed_size():
    plan = plan_resources(ClusterResources(cpus=8), actors=3, threads=2)
    assert (plan.min_actors, plan.max_actors, plan.actor_cpus, plan.threads) == (3, 3, 2.0, 2)


def test_gpu_actors_one_gpu_each_where_the_cluster_has_gpus():
    resources = ClusterResources(cpus=16, gpus=4)
    plan = plan_resources(resources, providers="cuda")
    assert plan.uses_gpu and (plan.min_actors, plan.max_actors, plan.actor_gpus, plan.actor_cpus) == (4, 4, 1.0, 1.0)
    assert plan.describe() == "4 GPU actors (1 thread each)"
    assert plan_resources(resources, providers="auto").uses_gpu  # auto takes the GPUs it finds
    assert not plan_resources(resources, providers="cpu").uses_gpu
    assert plan_resources(resources, providers="tensorrt,cuda", actors=2).max_actors == 2
    with pytest.raises(EdgeregError, match="need 5 GPUs; the Ray cluster has 4"):
        plan_resources(resources, providers="cuda", actors=5)


def test_gpu_requested_without_gpus_is_a_one_line_error():
    with pytest.raises(EdgeregError, match="has no GPU .*--providers cpu"):
        plan_resources(ClusterResources(cpus=8), providers="cuda")
    assert not plan_resources(ClusterResources(cpus=8), providers="auto").uses_gpu


def test_gpu_actors_on_a_cpu_poor_node_still_leave_the_decoders_a_share():
    resources = ClusterResources(cpus=2, gpus=2)
    plan = plan_resources(resources, providers="cuda")
    assert plan.uses_gpu and leaves_decoders_a_cpu(plan, resources)
    with pytest.raises(EdgeregError, match="would hold"):
        plan_resources(resources, providers="cuda", actors=2)


def test_provider_names_and_cluster_resources():
    assert provider_names("cuda, cpu") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_names("auto") == ["auto"]
    assert ClusterResources.from_ray({"CPU": 8.0, "GPU": 2.0, "memory": 1e9}) == ClusterResources(8.0, 2.0)
    assert not wants_gpu("cpu", ClusterResources(8, 8))
    with pytest.raises(EdgeregError, match="no CPU"):
        plan_resources(ClusterResources(cpus=0))
