"""How many pose actors, with how many CPUs and threads each: sized to the cluster, CPU and GPU alike (annotate and
`estimate_poses` both), so reading always has room to run."""

from __future__ import annotations

from typing import Any


def plan_actors(resources: dict, device: str, opts: Any) -> tuple[int, float, int | None]:
    """(pool size, CPUs per actor, torch threads per actor) that leave the read/decode tasks CPU to run on.

    On GPUs: one actor per GPU, with up to 4 CPUs each (its decode threads) while a CPU per GPU stays for the read
    tasks. On CPUs: actors never take every CPU of the cluster -- a pool that
    holds them all starves the read tasks and the job hangs without an error -- so one CPU stays for reading and
    decoding, and the actors' torch threads use what they were given.
    """
    cpus = resources.get("CPU", 1)
    if device.startswith("cuda"):
        actors = opts.actors or max(1, int(resources.get("GPU", 1)))
        per_actor = opts.cpus_per_actor or float(max(1, min(4, int(cpus // actors) - 1)))
        return actors, per_actor, max(1, int(per_actor))
    per_actor = opts.cpus_per_actor or (max(1.0, cpus - 1.0) if cpus <= 9 else 8.0)
    budget = max(per_actor, cpus - 1.0)  # keep one CPU for reading and decoding
    actors = opts.actors or max(1, int(budget // per_actor))
    # On a 2-core machine the actor is granted 1 CPU but the decode tasks are light: let torch use both cores.
    threads = max(1, int(per_actor) + (1 if cpus <= 2 else 0))
    return actors, per_actor, threads


def actor_pool(actors: int, calls: int):
    """Up to `actors` actors, each running `calls` batches at once (threads): with 2, one batch's host work
    overlaps the other's GPU work."""
    import ray.data

    if calls > 1:
        try:
            return ray.data.ActorPoolStrategy(min_size=1, max_size=actors, max_concurrent_calls_per_actor=calls,
                                              enable_true_multi_threading=True)
        except TypeError:  # a Ray without threaded UDF calls: one at a time
            pass
    return ray.data.ActorPoolStrategy(min_size=1, max_size=actors)
