"""Errors a user can cause.

Every command catches :class:`CgptError` at the top (``cgpt.launch.cli``) and prints its
message as one line with a non-zero exit, instead of a traceback. Raise it (or a subclass)
for bad configs, missing or corrupt files and impossible requests; let real bugs raise
whatever they raise.
"""


class CgptError(Exception):
    """A problem with the user's input, reported as one clear line."""


class ConfigError(CgptError, ValueError):
    """A config value that is impossible; the message names the field and the fix."""
