"""The one exception type the command line shows to users as a plain message."""


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong value, a refused
    overwrite.  The message says what is wrong and how to fix it; the CLI
    prints it on one line and exits with status 2, without a traceback."""


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
