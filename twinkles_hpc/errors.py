"""Exceptions that reach the user as one line and exit code 2 (bad input), or 75 (resubmit)."""

EXIT_BAD_INPUT = 2
#: The job stopped cleanly on SIGTERM/SIGUSR1 (e.g. Slurm's warning before the time limit) after
#: checkpointing: resubmit the same command to resume. 75 is EX_TEMPFAIL from sysexits.h.
EXIT_RESUBMIT = 75


class TwinklesError(Exception):
    """The base of every error twinkles-hpc raises on purpose (the CLI prints it as one line)."""


class InputError(TwinklesError, ValueError):
    """Bad user input: a config file, an OpSim database, an instance catalogue, a command-line value.

    The message is one line that names the file, the field and what was expected. A ValueError, so
    that a bad argument to an API function (e.g. a science config's field) is what Python code expects.
    """

    def __init__(self, source, field, expected, got=None):
        self.source, self.field, self.expected, self.got = str(source), field, expected, got
        msg = f"{self.source}: {field}: expected {expected}"
        if got is not None:
            msg += f", got {got!r}"
        super().__init__(msg)


class RunDirError(TwinklesError):
    """The run directory cannot be used (locked by another run, or made by a different config)."""


class Interrupted(TwinklesError):
    """A task stopped on request (signal) after writing a checkpoint; rerunning resumes it."""
