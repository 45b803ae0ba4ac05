"""Thin DVC stages: read params, call library code, write outputs.

The on-disk layout lives here (and mirrors dvc.yaml), so no library module hard-codes a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.files import atomic_write_json


class StageFailed(RuntimeError):
    """A stage finished what it could but must exit non-zero (e.g. some videos failed)."""


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to the project root (see dvc.yaml).

    `features_root` (params `storage.features`) moves the feature stores elsewhere, e.g. to
    `s3://bucket/affcache/features`; empty keeps them in data/features, where dvc.yaml expects them.
    """

    root: Path = Path(".")
    features_root: str = ""

    @classmethod
    def from_params(cls, params: Any, root: Path = Path(".")) -> "Layout":
        """The layout of the project at `root` (a stage's: the working directory): `storage.features`
        applied (a relative local folder lies under `root`), object-storage settings configured."""
        configure_storage(params.get("storage.endpoint_url", "") or "")
        features = str(params.get("storage.features", "") or "")
        if features and "://" not in features and not Path(features).is_absolute() and Path(root) != Path("."):
            features = str(Path(root) / features)
        return cls(root=Path(root), features_root=features)

    @property
    def index(self) -> Path:
        return self.root / "data" / "index.json"

    @property
    def scan_cache(self) -> Path:
        """This machine's memory of the dataset tree (`pipeline.datasets.scan_cache`): never tracked."""
        return self.root / ".affcache" / "index"

    @property
    def crops(self) -> Path:
        """The crop fingerprints the index stage writes beside the index (`records.crops_index_path`)."""
        from pipeline.records import crops_index_path

        return crops_index_path(self.index)

    @property
    def features(self) -> Path | str:
        return self.features_root.rstrip("/") if self.features_root else self.root / "data" / "features"

    def feature_dir(self, modality: str) -> Path | str:
        return f"{self.features}/{modality}" if self.features_root else self.features / modality

    def head_dir(self, head: str) -> Path:
        return self.root / "data" / "heads" / head

    def fusion_dir(self, fusion: str) -> Path:
        return self.root / "data" / "fusion" / fusion

    def model_dir(self, kind: str, name: str) -> Path:
        """data/heads/<name> for a head, data/fusion/<name> for a fusion (heads.registry kinds)."""
        return self.head_dir(name) if kind == "head" else self.fusion_dir(name)

    def input_url(self, inp: str) -> str:
        """A registry input (`features/<modality>` or `heads/<head>`) as the store URL a model reads."""
        kind, _, name = inp.partition("/")
        if kind == "features":
            from pipeline.store import read_current

            return read_current(str(self.feature_dir(name)))
        if kind == "heads":
            return str(self.head_dir(name) / "outputs.zarr")
        raise ValueError(f"unknown model input {inp!r} (expected features/<modality> or heads/<head>)")

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def reports(self) -> Path:
        return self.root / "data" / "reports"


def configure_storage(endpoint_url: str, timeout_s: float = 10.0) -> None:
    """Point fsspec's S3 filesystem at an S3-compatible endpoint (MinIO, Ceph, a local test server)
    for every store URL of this process, after checking that something listens there (botocore
    would otherwise retry for minutes, mid-run). Credentials stay where AWS tools read them (AWS_*
    variables, ~/.aws); an empty endpoint leaves AWS's own (or the AWS_ENDPOINT_URL variable) in charge."""
    if not endpoint_url:
        return
    import socket
    from urllib.parse import urlsplit

    import fsspec.config

    url = urlsplit(endpoint_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise StageFailed(f"storage.endpoint_url {endpoint_url!r}: expected http(s)://host[:port]")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise StageFailed(f"storage.endpoint_url {endpoint_url}: cannot reach the object store ({exc}); check the "
                          "URL and that the server runs, before any video is touched") from exc
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint_url


def write_json(path: Path, data: Any) -> None:
    """Write a stage output as JSON through the one atomic writer (sorted keys, stable bytes)."""
    atomic_write_json(path, data)


def dataset_root(params: Any) -> Path | None:
    """This machine's dataset root (params `dataset.root`), which resolves the index's relative paths.

    Read here, and on purpose not a DVC param of the stages after `index`: the root says where the
    files are, while the index (label hashes, container probes) and its crops file (crop content
    fingerprints) say what they are, and those files are the stages' deps. So a teammate's copy at
    another path reuses every result. A root that does not hold what the index describes is caught
    where it is read: extraction compares each source's fingerprint with its store entry, and
    training and evaluation check each label file against its hash in the index (`pipeline.labels`).
    """
    root = params.get("dataset.root")
    return Path(root) if root else None


def read_videos(params: Any, layout: Layout, crops: bool = False) -> list:
    """The index's videos, paths under this machine's dataset root; `crops` attaches the crop
    fingerprints (the extraction stages that read crops depend on that file too)."""
    from pipeline.records import read_crops, read_index, with_crops

    videos = read_index(layout.index, root=dataset_root(params))
    return with_crops(videos, read_crops(layout.crops)) if crops else videos
