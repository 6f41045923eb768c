"""The one exception type users see: a one-line message that says what is wrong and where.

A leaf: it imports nothing of the package and nothing of Inspect. Where Inspect creates our tasks,
scorers and solvers, :func:`inspect_em.inspect_adapter.one_line_errors` turns it into Inspect's
prerequisite error, which ``inspect eval`` / ``inspect score`` print as the message alone (no
traceback), by path or by registry name alike. It is not a ``ValueError``: Inspect's scorer loader
takes a ``ValueError`` for "not found here" and would print that instead of our message.
"""


class InspectEmError(Exception):
    """A user-facing error. Its message is a single line naming the file/field/value at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return str(self.message)
