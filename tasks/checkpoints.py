"""Where a checkpoint named on the command line or in a flow parameter lives on this machine."""

from __future__ import annotations

from pathlib import Path

from core.store import ObjectStore, check_key, download_prefix

#: `store:<prefix>` names a checkpoint in the object store rather than a local directory.
STORE_PREFIX = "store:"


def local_checkpoint(spec: str, store: ObjectStore, cache: Path) -> Path:
    """A checkpoint directory from `store:<prefix>` (fetched once into `cache`) or a local path."""
    if spec.startswith(STORE_PREFIX):
        prefix = check_key(spec.removeprefix(STORE_PREFIX).strip("/"))
        if not prefix:
            raise FileNotFoundError(f"checkpoint {spec!r} names no prefix: use {STORE_PREFIX}<prefix>")
        local = cache / prefix.replace("/", "__")  # one folder under the cache (no segment is "." or "..")
        if not (local / "config.json").exists():
            download_prefix(store, prefix, local)
        return local
    path = Path(spec).expanduser().resolve()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"checkpoint {spec!r} has no config.json: pass a local LLaVA-OneVision checkpoint directory, "
            f"or {STORE_PREFIX}<prefix> for one in the object store"
        )
    return path
