"""The one error type for user mistakes.

Anything a person can fix (a bad path, an unknown sampler, a width that is not a multiple of 8) raises
`FacesmithError` with a one-line message that names the input and says what to do. The CLI prints it as
one red line and exits with status 2. Programming errors keep raising their own types with tracebacks.
"""


class FacesmithError(Exception):
    """A mistake in what the user asked for, with a message they can act on."""
