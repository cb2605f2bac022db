"""Ray workers: ``executor="ray"`` runs a Transformer's function (or a Filter's
predicate) in Ray actors, anywhere in a Ray cluster.

Nothing in this package is imported by ``import reflux``, and importing the
package itself does not import Ray (only :mod:`~reflux.run.ray.logic` and
:mod:`~reflux.run.ray.actors` do, when a run starts a Ray node).

``connect``
    the Ray session (an existing one, ``RAY_ADDRESS``, or a local Ray
    started with the pipeline's ``ray_init``), the checks made before a run,
    the actors' default options, and :class:`RayWorkerError`.
``logic``
    the node's logic on the driver: batches out, results back, in order,
    through the node's error policy, with backpressure.
``actors``
    the driver's side of a node's actors: starting, probing, restarts, ending.
``actor``
    the class each actor runs (the function, its ``open()``/``close()``, one
    batch per call).
"""
from __future__ import annotations

from .connect import RayWorkerError

__all__ = ["RayWorkerError"]
