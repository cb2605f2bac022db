"""The Ray session a pipeline's Ray nodes use, and the checks made before a run starts.

:func:`connect` is called by :meth:`Pipeline.start` (in the caller's thread)
when some node has ``executor="ray"``: it uses the Ray session of this process
if there is one (the user called ``ray.init(...)``), else it calls
``ray.init(**ray_init)``, which joins the cluster ``RAY_ADDRESS`` names or
starts a local Ray.  A session reflux started stays up for later runs and
ends with the interpreter (or ``ray.shutdown()``), as Ray's own libraries do:
starting Ray takes seconds.
"""
from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ...errors import RefluxError, ValidationError

__all__ = ["RayWorkerError", "actor_options", "connect", "default_workers", "load_cloudpickle", "load_ray"]

logger = logging.getLogger("reflux")


def load_ray() -> Any:
    """Ray, imported when a Ray node needs it.  Typed loosely on purpose: Ray's own
    annotations are partial, and where reflux is type-checked Ray may not be installed."""
    return importlib.import_module("ray")


def load_cloudpickle() -> Any:
    """Ray's cloudpickle (what Ray pickles functions, items and results with)."""
    return importlib.import_module("ray.cloudpickle")


class RayWorkerError(RefluxError):
    """A Ray actor of a node could not start, or died (its process or its machine) while it held items.

    An actor that cannot start (its ``open()`` raised, the function could not
    be loaded there) fails the node with the actor's traceback; items held by
    an actor that died go through the node's error policy (re-sent per
    ``retries=``); a node whose every actor died for good fails.
    """


def connect(ray_init: Mapping[str, Any] | None, nodes: Iterable[Any]) -> float:
    """Make sure this process is connected to Ray, and that the Ray nodes' functions can travel.

    Returns the seconds ``ray.init`` took (0.0 when a session was already up).
    Raises :class:`~reflux.ValidationError` naming the node whose function
    Ray cannot pickle.
    """
    ray = load_ray()
    cloudpickle = load_cloudpickle()
    for node in nodes:
        fn = node.fn if node.kind == "Transformer" else node.predicate
        try:
            cloudpickle.dumps(fn)
        except Exception as exc:
            raise ValidationError(
                f"{node.label}: executor='ray' sends the function to Ray actors, but Ray cannot pickle it "
                f"({type(exc).__name__}: {exc})") from exc
    if ray.is_initialized():
        if ray_init:
            logger.info("Ray is already initialized in this process; ray_init=%r is not applied", dict(ray_init))
        return 0.0
    t0 = time.monotonic()
    ray.init(**dict(ray_init or {}))
    spent = time.monotonic() - t0
    logger.info("connected to Ray in %.1fs (%s)", spent, ray.get_runtime_context().gcs_address)
    return spent


def actor_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """The options a node's actors are made with: the node's ``ray_options`` over reflux's defaults.

    Defaults: Ray's own for the CPU (an actor needs a CPU to be placed and
    holds none while it runs, so the actors of several nodes share the
    cluster's cores as threads share a machine's; ask ``num_cpus=1`` to
    reserve one per actor); restarted by Ray whenever it dies
    (``max_restarts=-1``, as Ray Data's actor pools); no automatic re-run of a
    batch on a restarted actor (``max_task_retries=0``: the node's ``retries=``
    decides); spread over the cluster's machines (``scheduling_strategy="SPREAD"``)
    unless a placement group or strategy is given.
    """
    opts: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0}
    if "placement_group" not in given and "scheduling_strategy" not in given:
        opts["scheduling_strategy"] = "SPREAD"
    opts.update(given)
    return opts


def default_workers(options: Mapping[str, Any]) -> int:
    """How many actors the cluster's resources hold, each asking what ``options`` ask (one CPU
    unless ``num_cpus`` says otherwise; at least 1)."""
    total = load_ray().cluster_resources()
    need: dict[str, float] = {"CPU": float(options.get("num_cpus", 1) or 0),
                              "GPU": float(options.get("num_gpus") or 0)}
    for name, amount in (options.get("resources") or {}).items():
        need[name] = float(amount)
    fits = [int(total.get(name, 0.0) // amount) for name, amount in need.items() if amount > 0]
    return max(1, min(fits)) if fits else max(1, int(total.get("CPU", 1)))
