"""The one exception type the converter raises for bad input or a failed write."""


class ConvertError(Exception):
    """A problem the user can fix; str() is a single line naming the file/tensor/field."""
