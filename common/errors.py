"""The toolkit's exception types.

Every error names the file or field it is about, so that a user reading it knows
what to fix. Audio failures carry a short machine-readable ``reason`` that ends up
in ``failures.csv`` of a feature cache.
"""

from __future__ import annotations

from pathlib import Path


class ToolkitError(Exception):
    """Base class of every error this toolkit raises on purpose."""


class ConfigError(ToolkitError):
    """An experiment or feature configuration is invalid (unknown key, bad value)."""


class MetadataError(ToolkitError):
    """FMA metadata is missing, malformed, or asked for something it does not have."""


class FeatureCacheError(ToolkitError):
    """A feature cache is missing, incomplete, or does not match the requested settings."""


class AudioError(ToolkitError):
    """An audio file cannot be turned into a usable clip.

    Parameters
    ----------
    path : path-like
        The offending file.
    detail : str
        Human-readable explanation (decoder message, measured level or length).
    """

    reason = "audio_error"

    def __init__(self, path: str | Path, detail: str = "") -> None:
        self.path = Path(path)
        self.detail = detail
        message = f"{self.path}: {self.reason}"
        super().__init__(f"{message} ({detail})" if detail else message)


class UnreadableAudioError(AudioError):
    """Missing, zero-byte, truncated beyond decoding, or not audio at all."""

    reason = "unreadable"


class SilentAudioError(AudioError):
    """Decodes, but holds no signal above the silence threshold."""

    reason = "silent"


class TooShortAudioError(AudioError):
    """Decodes, but is shorter than the configured minimum duration."""

    reason = "too_short"


class OutputExistsError(ToolkitError, FileExistsError):
    """An output file already exists; the toolkit never silently overwrites one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path} already exists; not overwriting it")


class FolderBusyError(ToolkitError):
    """Another run holds a folder's writer lock (:func:`common.locks.folder_lock`) and this one
    was told not to wait, or waited too long."""


class FoldError(ToolkitError):
    """A finished fold of an experiment cannot be used: damaged files, or a diverged model.

    Parameters
    ----------
    fold_dir : path-like
        ``runs/<exp>/fold_<k>``.
    detail : str
        What is wrong, naming the file or the score.
    retrain : str
        The command that trains the fold again (``make train EXP=<exp> FOLD=<k>``).
    hint : str
        Appended after the command (what to change first), or empty.
    """

    def __init__(self, fold_dir: str | Path, detail: str, *, retrain: str, hint: str = "") -> None:
        self.fold_dir = Path(fold_dir)
        self.detail = detail
        self.retrain = retrain
        message = f"{detail}; move {self.fold_dir} away and retrain the fold with `{retrain}`"
        super().__init__(f"{message} ({hint})" if hint else message)


class DamagedFoldError(FoldError):
    """A file of a finished fold is missing, of another size or hash than recorded, or unloadable."""


class DivergedFoldError(FoldError):
    """A finished fold's validation log loss is not finite or far worse than the uniform prior's
    (:func:`common.runs.has_diverged`)."""


class FailedFoldError(DivergedFoldError):
    """A fold's training stopped on a non-finite loss (``"status": "failed"`` in its summary,
    :func:`common.runs.fold_status`): a diverged fold that did not finish its epochs."""


class DiskSpaceError(ToolkitError):
    """A file system has less free space than a command is about to write, or filled up while it wrote."""
