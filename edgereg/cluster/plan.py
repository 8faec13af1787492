"""How many ONNX Runtime actors, with which resources, for a Ray cluster of a given size.

Pure logic, no Ray import: the engine feeds it ``ray.cluster_resources()``.

The rule that keeps a run from hanging: the actor pool must leave the decode tasks at least
:data:`MIN_DECODE_CPUS` logical CPUs. Ray Data schedules tasks by their requested resources; an actor
pool that reserves every CPU leaves the decode tasks unschedulable, the actors wait for input that
never comes and the run hangs without an error (observed with one CPU and one actor). So:

* flags the user gave (``--actors``, ``--threads``) that would starve the decoders are refused
  with the largest pool that fits;
* defaults never starve them: half the CPUs for actors (like the local engine gives half the cores
  to ONNX Runtime), and on a cluster with fewer than two CPUs the actor and the decode tasks get
  fractions of a CPU (Ray's CPUs are logical: the processes then share the core).

Decode tasks request :data:`DECODE_TASK_CPUS` (half a CPU) each: reading a file waits on the disk or
the network as much as it computes, so two per core keep a core busy, as the local engine runs more
decoder threads than cores. CPU actors request as many CPUs as they have ONNX Runtime intra-op
threads. GPU actors request one GPU each and their threads' CPUs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgereg.core.providers import ALIASES
from edgereg.errors import EdgeregError

MIN_DECODE_CPUS = 1.0  # logical CPUs the actor pool must leave to the decode tasks
DECODE_TASK_CPUS = 0.5  # logical CPUs each decode task requests
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


@dataclass(frozen=True)
class ClusterResources:
    """What a Ray cluster offers, in Ray's logical units.

    Attributes:
        cpus: logical CPUs over all nodes.
        gpus: GPUs over all nodes.
    """

    cpus: float
    gpus: float = 0.0

    @classmethod
    def from_ray(cls, resources: Mapping[str, float]) -> ClusterResources:
        """From ``ray.cluster_resources()`` (``{"CPU": 8.0, "GPU": 1.0, ...}``)."""
        return cls(float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0)))


@dataclass(frozen=True)
class ResourcePlan:
    """The actor pool and the decode tasks of one run.

    Attributes:
        min_actors, max_actors: the pool autoscales between these (equal: a fixed pool).
        actor_cpus: logical CPUs each actor requests.
        actor_gpus: GPUs each actor requests (0 or 1).
        threads: ONNX Runtime intra-op threads per actor.
        decode_cpus: logical CPUs each decode task requests.
        note: what was resized and why, for the user ("" when nothing was).
    """

    min_actors: int
    max_actors: int
    actor_cpus: float
    actor_gpus: float
    threads: int
    decode_cpus: float
    note: str = ""

    @property
    def uses_gpu(self) -> bool:
        return self.actor_gpus > 0

    def describe(self) -> str:
        """``1..4 CPU actors (1 thread each)`` or ``2 GPU actors``, for the start-up line."""
        count = str(self.max_actors) if self.min_actors == self.max_actors else f"{self.min_actors}..{self.max_actors}"
        kind = "GPU" if self.uses_gpu else "CPU"
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''} each"
        return f"{count} {kind} actor{'s' if self.max_actors > 1 else ''} ({threads})"


def provider_names(providers: str | Sequence[str]) -> list[str]:
    """``"cuda,cpu"`` -> ``["CUDAExecutionProvider", "CPUExecutionProvider"]``; ``"auto"`` stays."""
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()] or ["auto"]
    return [p if p == "auto" else ALIASES.get(p.lower(), p) for p in providers]


def wants_gpu(providers: str | Sequence[str], resources: ClusterResources) -> bool:
    """GPU actors: a GPU provider was named, or ``auto`` on a cluster that has GPUs.

    Raises:
        EdgeregError: a GPU provider was named and the cluster has no GPU.
    """
    names = provider_names(providers)
    explicit = [n for n in names if n in GPU_PROVIDERS]
    if explicit and resources.gpus < 1:
        raise EdgeregError(f"--providers {','.join(names)} needs GPU actors but the Ray cluster has no GPU "
                           f"({resources.cpus:g} CPUs); add GPU nodes or use --providers cpu")
    return bool(explicit) or (names == ["auto"] and resources.gpus >= 1)


def plan_resources(resources: ClusterResources, *, providers: str | Sequence[str] = "auto",
                   actors: int | None = None, threads: int | None = None) -> ResourcePlan:
    """Size the actor pool for ``resources`` (see the module docstring for the rules).

    Args:
        resources: the cluster's logical CPUs and GPUs.
        providers: ``--providers`` (decides CPU or GPU actors).
        actors: ``--actors``: a fixed pool of this size; None sizes it from the cluster.
        threads: ``--threads``: ONNX Runtime threads (and CPUs) per actor; None: 1.

    Raises:
        EdgeregError: the cluster has no CPU, the GPU request cannot be met, or the given
            ``actors`` x ``threads`` would leave the decode tasks no CPU.
    """
    if resources.cpus <= 0:
        raise EdgeregError("the Ray cluster reports no CPU; decode tasks cannot run — check `ray status`")
    gpu = wants_gpu(providers, resources)
    fixed_threads = threads is not None
    threads = threads or 1
    free = resources.cpus - MIN_DECODE_CPUS  # CPUs the actors may take without starving the decoders

    if gpu:
        gpus = int(resources.gpus)
        if actors is not None and actors > gpus:
            raise EdgeregError(f"--actors {actors} GPU actors need {actors} GPUs; the Ray cluster has {gpus}: "
                               f"use --actors {gpus} or fewer")
        count = actors or gpus
        return _fit(count, count, threads, 1.0, resources, free, explicit=actors is not None or fixed_threads)

    if actors is not None:
        return _fit(actors, actors, threads, 0.0, resources, free, explicit=True)
    most = max(1, math.floor(resources.cpus / 2 / threads))
    return _fit(1, most, threads, 0.0, resources, free, explicit=fixed_threads)


def _fit(min_actors: int, max_actors: int, threads: int, gpus: float, resources: ClusterResources,
         free: float, *, explicit: bool) -> ResourcePlan:
    """The plan if ``max_actors * threads`` CPUs leave the decoders theirs; else refuse or shrink."""
    if max_actors * threads <= free:
        return ResourcePlan(min_actors, max_actors, float(threads), gpus, threads, DECODE_TASK_CPUS)
    if explicit:
        fits = math.floor(free / threads) if free >= threads else 0
        fix = (f"use --actors {fits}" if fits else
               f"use --threads {max(1, math.floor(free))}" if free >= 1 else
               "give the cluster more CPUs or leave --actors/--threads out (edgereg then shares the CPU)")
        raise EdgeregError(
            f"{max_actors} actor{'s' if max_actors > 1 else ''} x {threads} thread{'s' if threads > 1 else ''} "
            f"would hold {max_actors * threads} of the cluster's {resources.cpus:g} CPUs and leave the decode "
            f"tasks fewer than {MIN_DECODE_CPUS:g} (the run would hang); {fix}")
    if free >= threads:  # fewer actors fit
        count = max(1, math.floor(free / threads))
        return ResourcePlan(min(min_actors, count), count, float(threads), gpus, threads, DECODE_TASK_CPUS,
                            note=f"actor pool capped at {count} to leave {MIN_DECODE_CPUS:g} CPU to the decode tasks")
    # Under two CPUs: the actors and the decode tasks share them in fractions. The decode tasks
    # request less than an actor so that Ray Data keeps the two stages apart (it fuses operators
    # whose resource requests are equal).
    share = resources.cpus / 2 / max_actors
    return ResourcePlan(min_actors, max_actors, share, gpus, 1, share / 2,
                        note=f"the cluster has {resources.cpus:g} CPU: actors and decode tasks share it")
