"""The one exception type for problems the user can fix (bad path, bad audio, bad checkpoint).

The CLI turns it into one line on stderr and exit status 2; everything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    pass
