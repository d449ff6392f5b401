"""User-facing error types.

Every error a user can cause (bad data, bad recipe, mismatched files) is one of these. The CLI
prints the message as a paragraph without a traceback; the message names the file, key or sample
and says what to do.
"""


class LtscaleError(Exception):
    """Base class: an error caused by input, reported without a traceback."""


class DataError(LtscaleError):
    """A dataset file is missing, malformed or inconsistent."""


class ManifestError(LtscaleError):
    """A manifest is malformed or does not match the shards it points at."""


class RecipeError(LtscaleError):
    """A recipe has an unknown key, a wrong type or an impossible combination."""


class CheckpointError(LtscaleError):
    """A checkpoint is missing, incomplete or does not fit the model."""


class LaunchError(LtscaleError):
    """The scheduler or the tracking server cannot take this submission."""
