"""The one exception type users see: a one-line message that says what is wrong and where.

It subclasses Inspect's prerequisite error (through :mod:`inspect_em.inspect_adapter`), which
``inspect eval`` / ``inspect score`` print as the message alone (no traceback) when raised while a
task or scorer is created, and ``ValueError`` for callers that catch that.
"""

from .inspect_adapter import PrerequisiteError


class InspectEmError(PrerequisiteError, ValueError):
    """A user-facing error. Its message is a single line naming the file/field/value at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.message)
