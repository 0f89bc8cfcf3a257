"""The pipeline's expected failures: each message names the problem and the fix.

The stage runner turns any :class:`PipelineError` into a one-paragraph message and a non-zero exit
status; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal

#: the exit status of an interrupted stage or reproduction (128 + SIGINT, as a shell reports Ctrl-C)
EXIT_INTERRUPTED = 130


def raise_interrupt(signum, _frame):
    """Signal handler: SIGTERM (or any other signal) ends the work the way Ctrl-C does, as KeyboardInterrupt."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


class PipelineError(Exception):
    """An expected failure of a stage (bad input, corrupt file, failed run); never a bug."""


class ParamsError(PipelineError, ValueError):
    """A params.yaml value that does not fit the schema; the message starts with the key path."""


class ArtifactError(PipelineError):
    """A file the pipeline reads back (model, checkpoint, metrics) is missing, corrupt or not ours."""


class ChecksumError(ArtifactError, ValueError):
    """A raw or prepared file whose content is not what it should be (corrupt, truncated, replaced)."""


class DataNotFoundError(PipelineError, FileNotFoundError):
    """No source had the dataset; the message lists every source tried and how to provide one."""


class ConversionError(PipelineError):
    """The converted SNN does not reproduce its ReLU network (SPEC 3.4)."""


class TrainingFailed(PipelineError):
    """A training run diverged or stopped learning; the previous outputs are kept."""
