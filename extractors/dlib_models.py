"""dlib's face models as the face code uses them: located offline, loaded once, named for fingerprints.

`dlib-bin` (dlib as a prebuilt wheel) and `face-recognition-models` (a wheel that ships dlib's model
files) are core dependencies: face detection (HOG or CNN), the 68-point landmarks that align the
crops and the inner-lip mouth signal all come from them, so every install runs the same default and
a store never depends on what happens to be installed.

The model files are found through the package's location without importing it: its `__init__`
imports `pkg_resources`, which recent setuptools no longer ship, while the files are all we need.

Thread safety: dlib's `shape_predictor` call is const, so one shared instance serves every thread
(`shared_predictor`; ~1 s and 100 MB to load). The HOG and CNN detectors keep scan state while they
run, so each video (thread) builds its own (`hog_detector`, `cnn_detector`; milliseconds).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

from extractors.base import ExtractorError

INSTALL_HINT = "pip install dlib-bin face-recognition-models (core dependencies of affcache)"
MODEL_FILES = {
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
}

_lock = threading.Lock()
_predictors: dict[str, Any] = {}


def model_path(kind: str) -> Path | None:
    """The file of model `kind` (`MODEL_FILES`) in face-recognition-models, or None when absent."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILES[kind]
    return path if path.is_file() else None


def problem(kind: str | None = None) -> str | None:
    """Why dlib (and model `kind`, when given) cannot run here; None when it can."""
    if importlib.util.find_spec("dlib") is None:
        return f"the dlib package is not installed ({INSTALL_HINT})"
    if kind is not None and model_path(kind) is None:
        return f"dlib's {MODEL_FILES[kind]} (package face-recognition-models) is not installed ({INSTALL_HINT})"
    return None


def require(kind: str | None, what: str) -> Any:
    """The dlib module, or an ExtractorError saying that `what` needs it and how to get it."""
    why = problem(kind)
    if why:
        raise ExtractorError(f"{what}: {why}")
    import dlib

    return dlib


def identity(*kinds: str) -> dict:
    """What results of these models depend on, for store fingerprints: dlib's version and each
    model file's content fingerprint."""
    import dlib

    from extractors.base import weights_fingerprint

    return {"dlib": str(dlib.__version__), **{k: weights_fingerprint(str(model_path(k))) for k in kinds}}


def shared_predictor(what: str = "face landmarks") -> Any:
    """The process-wide 68-point shape predictor (loaded on first use)."""
    with _lock:
        if "landmarks68" not in _predictors:
            dlib = require("landmarks68", what)
            _predictors["landmarks68"] = dlib.shape_predictor(str(model_path("landmarks68")))
        return _predictors["landmarks68"]


def hog_detector(what: str = "face detector 'dlib-hog'") -> Any:
    """A new instance of dlib's frontal-face HOG detector (the model is compiled into dlib)."""
    return require(None, what).get_frontal_face_detector()


def cnn_detector(what: str = "face detector 'dlib-cnn'") -> Any:
    """A new instance of dlib's CNN (MMOD) face detector."""
    dlib = require("cnn", what)
    return dlib.cnn_face_detection_model_v1(str(model_path("cnn")))
