"""One error type for every failure a user or an agent can act on."""


class PrefpilotError(Exception):
    """An error with a message that names the field or file and what to do.

    The CLI prints it without a traceback; the MCP server returns it as a tool error.
    """

    def __init__(self, message: str, *, code: str = "error", path: str | None = None, details=None):
        super().__init__(message)
        self.code = code
        self.path = path
        self.details = details  # e.g. the validator's report, for callers that show it
