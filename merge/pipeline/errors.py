"""Errors of the contributor's pipeline: backends, datasets, training, distillation.

Every check on user input runs before any training starts, and fails with one of these::

    MergeError (merge.errors)
    └── PipelineError              base of everything raised by the pipeline
        ├── UnsupportedBaseError       kind/checkpoint is not an encoder this pipeline can drive
        ├── DataError                  the user's data is unusable (names file and row/path)
        │   ├── DataFormatError        unreadable file, missing column, unknown extension
        │   ├── ImageDecodeError       an image file that does not decode
        │   ├── LabelError             a label outside the class list
        │   ├── EmptyClassError        a class with no example
        │   └── DatasetTooSmallError   fewer examples than one batch
        ├── DeltaError                 a weight delta that does not fit the base model
        └── DeviceError                a device spec that is malformed (merge.pipeline.device)
            └── DeviceUnavailableError a device this machine does not have (cuda, mps)
"""

from __future__ import annotations

from merge.errors import MergeError


class PipelineError(MergeError):
    """Base of every error the contributor's pipeline raises on purpose."""


class UnsupportedBaseError(PipelineError):
    """The base model is not an encoder of a kind this pipeline supports."""


class DataError(PipelineError):
    """The user's data cannot be used as given."""


class DataFormatError(DataError):
    """A data file is unreadable, has an unknown extension or lacks a column."""


class ImageDecodeError(DataError):
    """An image file does not decode."""


class LabelError(DataError):
    """A label is not one of the declared classes."""


class EmptyClassError(DataError):
    """A declared class has no example (a plugin could never learn it)."""


class DatasetTooSmallError(DataError):
    """The data holds fewer examples than one training batch."""


class DeltaError(PipelineError):
    """A weight delta names a module the base lacks, or has the wrong shape."""


class DeviceError(PipelineError):
    """A device spec that is not ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""


class DeviceUnavailableError(DeviceError):
    """The device asked for explicitly is not on this machine (raised before a model loads)."""
