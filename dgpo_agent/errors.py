"""User-facing errors: one line that names the problem and the fix.

The CLI prints these without a traceback; library users can catch ``DGPOError``.
"""


class DGPOError(Exception):
    """A problem the user can fix; the message says what it is and how."""
