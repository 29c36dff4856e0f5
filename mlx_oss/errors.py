"""The one exception type for problems the user can fix (bad file, field, flag or parameter).

The CLI prints str() as a single line (`mlx-oss: error: ...`) and exits 1, never a traceback; each
part of the program raises a named kind of it so callers can still tell them apart.
"""


class UserError(Exception):
    """A problem the user can fix; str() is a single line naming the file/field/parameter."""


class ConvertError(UserError):
    """Bad checkpoint input or a failed write in the converter (and the reader the loader shares)."""


class VocabularyError(UserError, ValueError):
    """The model's vocabulary cannot hold the tokenizer's ids (e.g. the 512-token `tiny` test preset)."""


class UsageError(UserError):
    """A bad argument found after parsing (`mlx-oss` exits 2 for it, like argparse's own errors)."""
