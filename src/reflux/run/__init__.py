"""Running a plan: the worker pool that runs every pipeline, process workers and Ray actors.

``pool``
    :class:`~reflux.run.pool.PoolRuntime`: a fixed pool of threads runs any
    number of nodes, one batch at a time, scheduled by notifications.
``base``, ``units``, ``outboxes``, ``fusion``
    its flags and results, what it schedules, where outputs go, and which
    stages run together.
``placement``
    where a node's logic runs: here, in process workers, or in Ray actors.
``process``
    process workers (``executor="process"``).
``ray``
    Ray actors (``executor="ray"``), anywhere in a Ray cluster.
"""
