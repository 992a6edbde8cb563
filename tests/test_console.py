"""A console a user can read: no TensorFlow start-up chatter or retracing warnings, real errors kept."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.console import filtered_stderr, is_startup_noise

ROOT = Path(__file__).resolve().parents[1]

#: What TensorFlow 2.21 prints on a CPU-only machine before its log level applies.
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796098124.092952    6180 port.cc:153] oneDNN custom operations are on. You may see ...\n",
    "I0000 00:00:1796098124.093215    6180 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n",
    "W0000 00:00:1796098124.093215    6180 some_file.cc:12] a warning\n",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow ...\n",
    "E0000 00:00:1796402031.659345    4205 util.cc:131] oneDNN supports DT_HALF only on platforms with AVX-512. "
    "Falling back to the default Eigen-based implementation if present.\n",
    "E0000 00:00:1796098129.898906    6180 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
]
ONEDNN_HALF = NOISE[-2]
CUINIT = NOISE[-1]
REAL = [
    "E0000 00:00:1796098129.898906    6180 op_kernel.cc:1830] OP_REQUIRES failed: out of memory\n",
    "E0000 00:00:1796402031.659345    4205 util.cc:140] oneDNN primitive creation failed for DT_HALF: invalid\n",
    "Traceback (most recent call last):\n",
    "fma-tag: error: song.mp3: unreadable\n",
    "/x/y.py:4: UserWarning: a Python warning\n",
]
#: Markers of the start-up lines in a subprocess's stderr.
STARTUP_MARKERS = ("I0000", "W0000", "absl::InitializeLog", "failed call to cuInit", "To enable the following")


def test_noise_is_hidden_and_errors_are_kept():
    def no_driver() -> bool:
        return False

    def driver() -> bool:
        return True

    assert all(is_startup_noise(line, min_level=2, driver_installed=no_driver) for line in NOISE)
    assert not any(is_startup_noise(line, min_level=2, driver_installed=no_driver) for line in REAL)
    # with a driver installed, a failed cuInit is a real error
    assert not is_startup_noise(CUINIT, min_level=2, driver_installed=driver)
    # TF_CPP_MIN_LOG_LEVEL=0 shows everything; 1 keeps warnings
    assert not any(is_startup_noise(line, min_level=0, driver_installed=no_driver) for line in NOISE)
    assert not is_startup_noise(NOISE[3], min_level=1, driver_installed=no_driver)
    # oneDNN's float16 notice is a warning logged as an error: shown where warnings are
    assert not is_startup_noise(ONEDNN_HALF, min_level=1, driver_installed=no_driver)


def test_filtered_stderr_writes_back_kept_lines_in_order(capfd):
    with filtered_stderr(lambda line: line.startswith("I0000")):
        os.write(2, b"I0000 00:00:1.1  1 a.cc:1] hidden\nkept one\n")
        os.write(2, b"I0000 00:00:1.2  1 a.cc:2] hidden too\nkept two\n")
    assert capfd.readouterr().err == "kept one\nkept two\n"


def _run_tag(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    """``python -m crowdai.tag`` with a missing weights folder: TensorFlow starts, then a real error."""
    import soundfile as sf

    song = tmp_path / "tone.wav"
    if not song.exists():
        sf.write(song, 0.3 * np.sin(np.arange(16000 * 4) * 2 * np.pi * 440 / 16000), 16000)
    return subprocess.run([sys.executable, "-m", "crowdai.tag", str(song), "--weights", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)


def test_cli_stderr_has_no_startup_lines_but_shows_the_real_error(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    quiet = _run_tag(tmp_path, env)
    assert quiet.returncode == 1
    assert "fma-tag: error: " in quiet.stderr
    assert "missing/MSD_musicnn/model.index: musicnn weights are missing" in quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if any(m in line for m in STARTUP_MARKERS)], quiet.stderr
    # the control: the same command asking for everything shows TensorFlow's start-up lines
    loud = _run_tag(tmp_path, {**env, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert loud.returncode == 1 and "musicnn weights are missing" in loud.stderr
    assert "I0000" in loud.stderr and "absl::InitializeLog" in loud.stderr


def test_fold_ensemble_prediction_does_not_trigger_retracing(caplog):
    import keras

    from common.inference import predict_clips

    models = [keras.Sequential([keras.Input((4, 6)), keras.layers.Flatten(),
                                keras.layers.Dense(3, activation="softmax")])
              for _ in range(6)]
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for n in (3, 5, 7):  # a fold ensemble over batches of every size, as tag and submit run it
            for model in models:
                features = rng.random((n, 4, 13), dtype=np.float32)
                probs = predict_clips(model, features, crop_frames=6, eval="chunks")
                chunks = np.stack([features[..., s:s + 6] for s in (0, 6, 7)], axis=1).reshape(-1, 4, 6)
                np.testing.assert_allclose(probs, model(chunks).numpy().reshape(n, 3, 3).mean(axis=1), rtol=1e-5)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


#: After ``import common``: TensorFlow's thread settings (refused once its eager context runs), then float16 ops.
FLOAT16_SCRIPT = """
import sys
import numpy as np
import common
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)  # the import left the eager context alone
x = tf.constant(np.ones(3, np.float16))
total = tf.function(lambda y: tf.reduce_sum(tf.cast(y, tf.float32)))
print(float(total(x)), float(tf.reduce_sum(tf.cast(x, tf.float32))))
print("a line of the program", file=sys.stderr)
"""


def test_onednn_float16_notice_of_the_first_op_is_hidden(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])

    def run(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", FLOAT16_SCRIPT], capture_output=True, text=True,
                              cwd=tmp_path, env={**env, **extra}, timeout=300)

    quiet = run()
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "3.0 3.0\n"
    assert quiet.stderr == "a line of the program\n"
    loud = run(TF_CPP_MIN_LOG_LEVEL="0")  # the control: asked for everything, TensorFlow says it
    if "DT_HALF" not in loud.stderr:
        pytest.skip("this CPU runs float16 in oneDNN (AVX-512): no notice to hide (the filter's rule is tested above)")
    assert loud.stderr.count("oneDNN supports DT_HALF only on platforms with AVX-512") == 1
