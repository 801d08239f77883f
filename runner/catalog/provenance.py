"""Which weights a job actually evaluated: where they came from, which revision, and a hash of their content.

lm-eval's results file names the model by its `model_args`; the runner fills them with what was loaded
(a local folder, the converted GGUF, a hub snapshot at a commit, or random weights), not the catalog's
repo id, and the MLflow run carries the same facts as `weights.*` tags. The content hash covers every
weight file; it is computed once per set of files and reused while their sizes and mtimes stay the same
(under paths.cache_dir/weights_hash), so a 15 GB checkpoint is read once per machine, not once per job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from runner.config.schema import ModelConfig

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Weights:
    source: str  # the folder loaded, or the hub repo id
    origin: str  # local folder | hub | converted GGUF | random (load_format=dummy)
    load_format: str
    revision: str | None = None  # hub commit hash where known
    content_hash: str | None = None  # "<algorithm>:<hex>" over the weight files; None for random weights

    def model_args(self) -> dict[str, str]:
        """lm-eval's `model_args` as its results file records them: `pretrained` names what was loaded."""
        args = {"pretrained": self.source, "load_format": self.load_format}
        if self.revision:
            args["revision"] = self.revision
        if self.content_hash:
            args["weights_hash"] = self.content_hash
        return args

    def tags(self) -> dict[str, str]:
        tags = {"weights.source": self.source, "weights.origin": self.origin, "weights.load_format": self.load_format}
        if self.revision:
            tags["weights.revision"] = self.revision
        if self.content_hash:
            tags["weights.hash"] = self.content_hash
        return tags


def describe(model: ModelConfig, source: str, cache_dir: str | Path) -> Weights:
    """The weights behind `source` (what runner.catalog.weights.resolve_model returned for `model`)."""
    load_format = str(model.load_format or "auto")
    if load_format == "dummy":
        return Weights(source, "random (load_format=dummy)", load_format)
    folder: Path | None = Path(source)
    revision = None
    if model.path:
        origin = "local folder"
    elif model.gguf:
        origin = f"converted GGUF ({model.gguf.package}/{model.gguf.file})"
    else:
        origin = "hub"
        folder, revision = _hub_snapshot(source, model.revision)
    content = content_hash(folder, Path(cache_dir) / "weights_hash") if folder and folder.is_dir() else None
    return Weights(source, origin, load_format, revision, content)


def _hub_snapshot(repo_id: str, revision: str | None) -> tuple[Path | None, str | None]:
    """The cached snapshot folder of `repo_id` at `revision` (a branch, tag or commit) and its commit hash."""
    from runner.catalog.hub import model_snapshot

    snapshot = model_snapshot(repo_id, revision)
    if snapshot is None:  # not cached (the engine will download it)
        return None, revision
    return snapshot, snapshot.name  # snapshots/<commit>


class _Digest(Protocol):
    """What content_hash needs of a hash object: blake3's and hashlib's both qualify."""

    def update(self, data: bytes, /) -> object: ...

    def hexdigest(self) -> str: ...


def _hasher() -> tuple[str, _Digest]:
    try:  # blake3 (a vLLM dependency) hashes several GB/s on all cores; sha256 where it is missing
        import blake3

        return "blake3", blake3.blake3(max_threads=blake3.blake3.AUTO)
    except ImportError:
        return "sha256", hashlib.sha256()


def content_hash(folder: Path, store: Path) -> str | None:
    """One hash over every weight file of `folder` (names and bytes), reused while sizes and mtimes hold."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        return None
    stats = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps([str(folder.resolve()), stats]).encode()).hexdigest()[:32]
    stored = store / f"{key}.txt"
    if stored.is_file():
        return stored.read_text().strip()
    start = time.perf_counter()
    name, digest = _hasher()
    for path, (relative, size, _) in zip(files, stats, strict=True):
        digest.update(f"{relative}\0{size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    value = f"{name}:{digest.hexdigest()}"
    log.info("Hashed %d weight file(s) of %s in %.1f s: %s", len(files), folder, time.perf_counter() - start, value)
    store.mkdir(parents=True, exist_ok=True)
    tmp = stored.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(value + "\n")
    tmp.replace(stored)
    return value
