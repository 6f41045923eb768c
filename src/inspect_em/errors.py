"""The one exception type users see: a one-line message that says what is wrong and where."""


class InspectEmError(ValueError):
    """A user-facing error. Its message is a single line naming the file/field/value at fault."""
