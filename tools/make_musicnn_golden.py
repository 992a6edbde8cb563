"""Golden taggrams from the ORIGINAL musicnn code, for the Keras port's parity test.

This is how ``tests/data/musicnn_golden/`` was made. It runs musicnn 0.1.0's own
``musicnn.extractor.extractor`` (TF-1 graph code) in a throwaway virtualenv outside
the project, because musicnn's pins (numpy < 1.17, TF 1.x) break any modern
environment::

    python3.11 -m venv /tmp/musicnn-venv
    /tmp/musicnn-venv/bin/pip install tensorflow==2.21.0 tf-keras==2.21.0 librosa==0.11.0 \\
        soundfile==0.14.0 numpy==2.4.6
    /tmp/musicnn-venv/bin/pip download musicnn==0.1.0 --no-deps --only-binary=:all: -d /tmp/whl
    /tmp/musicnn-venv/bin/pip install --no-deps /tmp/whl/musicnn-0.1.0-py3-none-any.whl
    TF_USE_LEGACY_KERAS=1 /tmp/musicnn-venv/bin/python tools/make_musicnn_golden.py \\
        --audio ../shared/audio --out tests/data/musicnn_golden --seconds 30

(``tf-keras`` provides the ``tf.compat.v1.layers`` the original graph is built with.)

Two changes to the original, both in ``musicnn.extractor.batch_data`` and nothing else:

1. **float16 fix.** The original casts the mel power spectrogram to float16 and then
   computes ``np.log10(10000 * audio_rep + 1)``. Under numpy < 2 (value-based
   casting) ``10000 * float16_array`` was promoted to float32; under numpy 2
   (NEP 50) it stays float16 and overflows to ``inf`` above a mel power of 6.55,
   which turns every tag into NaN. The patch keeps the float16 rounding of the mel
   power and does the arithmetic in float32, i.e. what the code computed under the
   numpy it was written for.
2. **first ``--seconds`` only**: ``librosa.load(..., duration=seconds)`` so that the
   golden files stay small (decoding stops there; resampling then runs on the cut).

Everything else (librosa 0.11 decoding and soxr_hq resampling, the mel filter bank,
3-s patches of 187 frames without overlap, the TF-1 graph restored from the wheel's
checkpoint, batch size 1) is the original's. Written per recording and model:
``<stem>.<model>.npy`` (float32 taggram, ``(n_patches, 50)``), and ``manifest.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODELS = ("MSD_musicnn", "MTT_musicnn")


def patch_batch_data(seconds: float | None) -> None:
    """Replace ``musicnn.extractor.batch_data`` by the original with the two changes above
    (``seconds=None``: whole files, as bench/tag.py uses it)."""
    import librosa
    import numpy as np
    from musicnn import configuration as config
    from musicnn import extractor

    def batch_data(audio_file, n_frames, overlap):
        audio, sr = librosa.load(audio_file, sr=config.SR, duration=seconds)
        audio_rep = librosa.feature.melspectrogram(y=audio, sr=sr, hop_length=config.FFT_HOP,
                                                   n_fft=config.FFT_SIZE, n_mels=config.N_MELS).T
        audio_rep = audio_rep.astype(np.float16).astype(np.float32)  # the fix, see the docstring
        audio_rep = np.log10(10000 * audio_rep + 1)
        last_frame = audio_rep.shape[0] - n_frames + 1
        batch = np.stack([audio_rep[start:start + n_frames] for start in range(0, last_frame, overlap)])
        return batch, audio_rep

    extractor.batch_data = batch_data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=Path("../shared/audio"), help="folder of .ogg recordings")
    parser.add_argument("--out", type=Path, default=Path("tests/data/musicnn_golden"))
    parser.add_argument("--seconds", type=float, default=30.0, help="analyse the first SECONDS of each file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import librosa
    import musicnn
    import numpy as np
    import tensorflow as tf
    from musicnn import configuration as config
    from musicnn import extractor

    patch_batch_data(args.seconds)
    files = sorted(args.audio.glob("*.ogg"))
    if not files:
        print(f"error: no .ogg files in {args.audio}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "how": "tools/make_musicnn_golden.py (original musicnn 0.1.0 extractor, float16 fix, first N seconds)",
        "seconds": args.seconds,
        "versions": {"musicnn": "0.1.0", "tensorflow": tf.__version__, "librosa": librosa.__version__,
                     "numpy": np.__version__},
        "musicnn_module": str(Path(musicnn.__file__).parent),
        "files": {},
    }
    for path in files:
        entry = manifest["files"].setdefault(path.name, {})
        for model in MODELS:
            taggram, tags = extractor.extractor(str(path), model=model, extract_features=False)
            taggram = np.asarray(taggram, dtype=np.float32)
            if not np.isfinite(taggram).all():
                print(f"error: {path}: {model} taggram is not finite", file=sys.stderr)
                return 1
            target = args.out / f"{path.stem}.{model}.npy"
            np.save(target, taggram)
            entry[model] = {"golden": target.name, "shape": list(taggram.shape),
                            "top_tags": [tags[i] for i in np.argsort(-taggram.mean(axis=0))[:5]]}
            print(f"{path.name} {model}: {taggram.shape} top {entry[model]['top_tags']}")
    manifest["tags"] = {"MSD_musicnn": config.MSD_LABELS, "MTT_musicnn": config.MTT_LABELS}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
