"""The project's errors: what a user can fix, apart from bugs.

Every error the library raises for bad input derives from :class:`RodentGBPError`.
The binaries and console scripts (``rodent_gbp.cli.run_main``) turn these, and
``OSError`` on files, into one line ``error: <file>: <problem>`` and exit code 2;
any other exception is a bug and keeps its traceback.

The subclasses also derive from ``ValueError``, so library callers that catch
``ValueError`` around a call keep working.
"""

from __future__ import annotations


class RodentGBPError(Exception):
  """Base class of the errors a user can act on (the message says what to change)."""


class DataError(RodentGBPError, ValueError):
  """A data file or folder is missing, unreadable or inconsistent."""


class CheckpointError(RodentGBPError, ValueError):
  """A model folder or checkpoint is missing, incomplete or does not fit."""


class InferenceError(RodentGBPError, ValueError):
  """A scan cannot be segmented as asked (outputs, geometry, placement)."""


class UsageError(RodentGBPError, ValueError):
  """Flags or arguments that contradict each other or are out of range."""


class TrainingError(RodentGBPError, ValueError):
  """Training cannot go on as configured (e.g. a non-finite loss)."""
