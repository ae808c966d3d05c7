"""The one exception type the command line shows to users as a plain message."""


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong value, a refused
    overwrite.  The message says what is wrong and how to fix it; the CLI
    prints it on one line and exits with status 2, without a traceback."""
