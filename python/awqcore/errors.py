"""Exception types shared by the Python tools and the C++ runtime's bindings.

The bindings translate awqcore::FormatError into FormatError below, so a corrupt
file raises the same class whether the Python reader or the C++ runtime found it.
"""


class Error(RuntimeError):
    """A runtime failure that is not the caller's fault (I/O, internal)."""


class FormatError(ValueError):
    """The model file is missing pieces, truncated, corrupt or inconsistent."""


class QueueFull(Error):
    """An Engine's request queue is full (max_queue requests wait for a slot):
    retry later. A server answers it with 503."""
