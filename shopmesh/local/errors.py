"""The one error of the local mesh tooling."""


class MeshError(RuntimeError):
    """The mesh cannot be started, reached or stopped; the message says what and why."""
