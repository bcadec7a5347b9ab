"""One error hierarchy for sitewatch.

Every error a user can cause derives from :class:`SitewatchError`. Subclasses also
inherit the matching built-in (``ValueError``, ``OSError``) so callers can catch either,
as rasterio does. Messages name the file or flag, the reason, and what to do next; the
CLI prints them as one line and exits with :attr:`SitewatchError.exit_code`.
"""

from __future__ import annotations


class SitewatchError(Exception):
    """Root of every error sitewatch raises on purpose."""

    #: Process exit code the CLI uses for this kind of error.
    exit_code = 1


class UsageError(SitewatchError, ValueError):
    """A flag, setting or argument has a bad value."""

    exit_code = 2


class NotFoundError(UsageError, KeyError):
    """A named thing (a site id, a class, a sample) does not exist where it was looked for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(SitewatchError, OSError):
    """An input file is missing, unreadable or unusable."""

    exit_code = 3

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NotARasterError(InputError):
    """The file cannot be opened as a raster."""


class CorruptRasterError(InputError):
    """The raster opened but its pixel data cannot be read."""


class NotGeoreferencedError(InputError):
    """The raster has no CRS or no geotransform."""


class BandError(InputError):
    """The scene's bands do not fit the model."""


class ModelError(SitewatchError):
    """A model name or checkpoint cannot be used."""

    exit_code = 4


class CheckpointError(ModelError, OSError):
    """A checkpoint file is missing, not a checkpoint, or fails its checksum."""


class OutputError(SitewatchError, OSError):
    """The output location cannot be written, or already holds results."""

    exit_code = 5
