"""Describing a pipeline: the nodes a user builds, how they are wired, and the plan they compile to.

``base``
    what every node shares (name, capacity, batch size, error policy) and
    the ``>>`` that wires nodes into a :class:`~reflux.Flow`.
``nodes``
    the nine node types, each checking its arguments (errors name the node).
``graph``
    nodes and edges, and the checks that they form a valid pipeline.
``plan``
    the compiled plan: one bounded channel per node input, one task per node.
``executors``, ``plugins``, ``sinks``
    checks of where a function runs, checks of compiled plug-ins, and the
    built-in sinks of :class:`~reflux.Loader`.

Nothing here runs anything: this layer imports no runtime, monitor or CLI code.
"""
