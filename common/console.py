"""A console a user can read: TensorFlow's C++ start-up chatter is hidden, its errors are not.

TensorFlow 2.21 logs through Abseil. Everything its shared libraries log while they load
(``I0000 … port.cc] oneDNN custom operations are on``, ``cudart_stub.cc] Could not find
cuda drivers``) and when the devices are first listed (``E0000 … failed call to cuInit``
on a machine without an NVIDIA driver) happens before Abseil's logging is initialised, so
it goes straight to file descriptor 2 and ``TF_CPP_MIN_LOG_LEVEL`` does not filter it:
TensorFlow applies that variable only once its Python module runs.

:func:`install_tensorflow_import_filter` (called by ``import common``) therefore wraps
the first ``import tensorflow`` — whoever triggers it, Keras included — and the first
device listing in :func:`filtered_stderr`: descriptor 2 goes to a temporary file, and
afterwards every line is written back except those :func:`is_startup_noise` recognises:
Abseil records below ``TF_CPP_MIN_LOG_LEVEL`` (default 2, set by ``import common``
unless the user chose: INFO and WARNING hidden, ERROR shown), Abseil's pre-initialisation
notice, the cuInit error when no NVIDIA driver is installed, and oneDNN's notice that it
runs float16 only with AVX-512. Every other line — Python warnings, tracebacks, real
TensorFlow errors — is written back in order. ``TF_CPP_MIN_LOG_LEVEL=0`` shows everything.

The oneDNN notice (``E0000 … util.cc:131] oneDNN supports DT_HALF only on platforms with
AVX-512. Falling back to the default Eigen-based implementation if present.``) is logged
once per process, at ERROR severity although it is a warning, by the first float16 op —
in training, the first batch of the float16 feature cache, long after the import. With
``TF_ENABLE_ONEDNN_OPTS=1`` (set by ``import common``) every command on a CPU without
AVX-512 would print it. So the filter also wraps the first initialisation of TensorFlow's
eager context (which every op needs, and which no longer allows thread or device settings
afterwards, so it is not forced at import), and runs one float16 op on the CPU right
after it, while the filter is on: the check is done, and said, there, and never again.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

#: An Abseil log record: severity letter, MMDD, time, thread, file:line] message.
_ABSL_RECORD = re.compile(r"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s\]]+:\d+\] (?P<message>.*)")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_PREINIT_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
#: The second line of cpu_feature_guard.cc's INFO record.
_CONTINUATION = "To enable the following instructions:"
#: Logged when the CUDA driver cannot be initialised; expected where no driver is installed.
_CUINIT_FAILURE = "failed call to cuInit"
#: Logged (as an ERROR) by the first float16 op on a CPU without AVX-512: oneDNN leaves float16 to Eigen.
_ONEDNN_NO_HALF = "oneDNN supports DT_HALF only on platforms with AVX-512"


def min_log_level() -> int:
    """TensorFlow's ``TF_CPP_MIN_LOG_LEVEL`` (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL); 0 when unset or invalid."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def nvidia_driver_installed() -> bool:
    """Whether the CUDA driver library (``libcuda.so.1``) can be loaded on this machine."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def is_startup_noise(line: str, *, min_level: int, driver_installed: Callable[[], bool]) -> bool:
    """Whether a line TensorFlow wrote while starting is hidden.

    Parameters
    ----------
    line : str
    min_level : int
        ``TF_CPP_MIN_LOG_LEVEL``: Abseil records of a lower severity are hidden.
    driver_installed : callable
        Asked (only for a failed cuInit) whether an NVIDIA driver is installed: without
        one, the failure is expected and hidden; with one, it is a real error and shown.

    oneDNN's float16 notice is logged as an ERROR but is a warning (the op runs, on
    TensorFlow's own kernels): hidden from ``min_level`` 2, as warnings are.
    """
    if min_level < 1:
        return False
    if line.startswith((_PREINIT_NOTICE, _CONTINUATION)):
        return True
    record = _ABSL_RECORD.match(line)
    if record is None:
        return False
    severity = _SEVERITY[record["severity"]]
    if record["message"].startswith(_ONEDNN_NO_HALF):
        severity = _SEVERITY["W"]
    if severity < min_level:
        return True
    return _CUINIT_FAILURE in record["message"] and record["severity"] == "E" and not driver_installed()


@contextlib.contextmanager
def filtered_stderr(hidden: Callable[[str], bool]) -> Iterator[None]:
    """Send descriptor 2 to a temporary file; on exit, write back the lines ``hidden`` rejects.

    Python's ``sys.stderr`` is flushed on entry and exit, so lines keep their order. When
    descriptor 2 cannot be duplicated (closed), nothing is redirected.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = "".join(line for line in text.splitlines(keepends=True) if not hidden(line))
            if kept:
                os.write(2, kept.encode("utf-8"))


def quiet_startup() -> contextlib.AbstractContextManager:
    """:func:`filtered_stderr` with :func:`is_startup_noise` at the current ``TF_CPP_MIN_LOG_LEVEL``."""
    level = min_log_level()
    if level < 1:
        return contextlib.nullcontext()
    driver: list[bool] = []

    def driver_installed() -> bool:
        if not driver:
            driver.append(nvidia_driver_installed())
        return driver[0]

    return filtered_stderr(lambda line: is_startup_noise(line, min_level=level, driver_installed=driver_installed))


def quiet_first_context(tf) -> None:
    """Run the first initialisation of TensorFlow's eager context, then one float16 op, in :func:`quiet_startup`.

    Wraps ``Context.ensure_initialized`` of the ``tf`` module once; the first call puts the
    original back before it runs, so later calls cost nothing. The float16 op (a cast, on the
    CPU, outside any graph being traced) makes oneDNN check float16 support there, once per
    process (see the module docstring).
    """
    from tensorflow.python.eager import context

    original = context.Context.ensure_initialized

    def ensure_initialized(self) -> None:
        context.Context.ensure_initialized = original
        with quiet_startup():
            original(self)
            with tf.init_scope(), tf.device("/CPU:0"):
                tf.cast(tf.zeros((), tf.float16), tf.float32)

    context.Context.ensure_initialized = ensure_initialized


class _QuietLoader(importlib.abc.Loader):
    """Delegates to TensorFlow's own loader; runs the module and lists its devices in :func:`quiet_startup`,
    and makes the eager context's first initialisation quiet too (:func:`quiet_first_context`).

    A :class:`importlib.abc.Loader` (what ``ModuleSpec.loader`` holds); what it does not define
    itself is TensorFlow's loader's (``__getattr__``).
    """

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with quiet_startup():
            try:
                self._loader.exec_module(module)
                quiet_first_context(module)
                module.config.list_physical_devices()  # where cuInit runs (and fails without a driver)
            finally:
                module.__loader__ = self._loader
                if module.__spec__ is not None:
                    module.__spec__.loader = self._loader


class _TensorFlowImportFilter(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` through the other finders and wraps its loader (once)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install_tensorflow_import_filter() -> None:
    """Filter TensorFlow's start-up lines (see the module docstring) when it is first imported.

    Does nothing when TensorFlow is already imported or the filter is installed.
    """
    if "tensorflow" in sys.modules or any(isinstance(f, _TensorFlowImportFilter) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TensorFlowImportFilter())
