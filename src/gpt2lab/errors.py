"""The exceptions the command line shows to users as a plain one-line message."""


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong value, a refused
    overwrite.  The message says what is wrong and how to fix it; the CLI
    prints it on one line and exits with status 2, without a traceback."""


class TokenizerError(ValueError):
    """A tokenizer could not be found, read or built (a ``ValueError``, which
    the CLI reports like a :class:`UserError`)."""


class Stopped(Exception):
    """The user asked a long job to stop (Ctrl-C, or SIGTERM from a job
    scheduler) and it stopped cleanly, its work saved.  Not a failure of the
    input, so it is not a :class:`UserError`: the CLI prints the message
    (which says how to continue) on one line and exits with ``128 + signum``,
    the status a shell reports for a process ended by that signal."""

    def __init__(self, message: str, signum: int, quiet: bool = False):
        super().__init__(message)
        self.signum = signum
        self.quiet = quiet  # already said (by rank 0 of a data-parallel job)


class APIError(Exception):
    """An error answered to the client as OpenAI's JSON error object."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
