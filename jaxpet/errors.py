"""The one exception a user can fix: bad input, missing data, a busy or unwritable workdir.

Every experiment's main turns a :class:`UserError` into one line,
``error: <what> — <how to fix>``, and a non-zero exit (see :mod:`jaxpet.cli`);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message names the problem and the fix.

    A ``ValueError`` subclass, so library callers that catch ``ValueError`` keep working.
    """
