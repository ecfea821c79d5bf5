"""Errors that the command line reports as one clear line (never a traceback).

An error about one parameter's value is raised by the library with the parameter's name (``parameter=``:
a config key such as ``training.batch_size``, or a function's parameter such as ``slice_idx``) and,
in the problem's text, other parameters written ``{name}``. Each front end shows it in its own words
(``rendered``): the Hydra entry as ``training.batch_size=0``, the command line as ``--batch_size 0``,
the pipeline script with its own flags, so that the library never names another program's options.
"""

from __future__ import annotations

import re

_NO_VALUE = object()
_REFERENCE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


class Sam3dMedError(Exception):
    """Base class: the message is complete and meant for the user as it stands.

    ``Sam3dMedError(message)``, or ``Sam3dMedError(problem, parameter=NAME[, value=V])`` for a bad
    value of one parameter: shown as ``NAME=V: problem`` (``NAME: problem`` without a value), every
    ``{other}`` in ``problem`` shown as that parameter's name; ``rendered(names)`` shows it with a front
    end's names instead (``names``: parameter -> flag; a flag starting with ``-`` is followed by a space
    and the value, any other by ``=``)."""

    def __init__(self, message: str = "", *, parameter: str | None = None, value=_NO_VALUE):
        self.problem, self.parameter, self.value = message, parameter, value
        super().__init__(self.rendered({}))

    def rendered(self, names: dict[str, str]) -> str:
        """The message with ``names``' flags for the parameters it names (others as they are called)."""
        problem = _REFERENCE.sub(lambda m: names.get(m.group(1), m.group(1)), self.problem)
        if self.parameter is None:
            return problem
        flag = names.get(self.parameter, self.parameter)
        if self.value is not _NO_VALUE:
            if flag.startswith("-"):
                flag = f"{flag} {self.value}"
            else:  # as written in YAML / a Hydra override
                flag += "=" + (str(self.value).lower() if isinstance(self.value, bool) else repr(self.value))
        return f"{flag}: {problem}"


class InputError(Sam3dMedError):
    """Bad input data (a file missing, unreadable, or of the wrong shape, type or values)."""


class ConfigError(Sam3dMedError):
    """Bad options or configuration."""
