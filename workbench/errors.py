"""The one exception type the workbench raises for bad input.

Every message names the argument, what was expected, what was got and the fix. The CLI prints the message as
one line and exits non-zero; library callers can catch ``WorkbenchError`` (a ``ValueError``) as usual.
"""

__all__ = ["WorkbenchError", "closest"]

import difflib


class WorkbenchError(ValueError):
    """Bad input to a public entry point: the message says what was wrong and how to fix it."""


def closest(word: str, options: list[str], n: int = 3) -> str:
    """Up to ``n`` options closest to ``word``, formatted for an error message ("'a', 'b'")."""
    best = difflib.get_close_matches(word, options, n=n, cutoff=0.5) or options[:n]
    return ", ".join(repr(o) for o in best)
