"""Object storage for images, exports and checkpoints: one interface, two backends.

`s3://bucket/prefix` goes through boto3 to any S3-compatible endpoint (AWS,
MinIO, moto); `file:///dir` (or nothing: <state_dir>/store) is a local
directory with the same behaviour. Images are content-addressed by sha256, so
storing the same bytes twice is a no-op. Objects are private (no ACLs granted).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from core.config import Settings
from core.errors import SekeError


def image_key(sha256: str, fmt: str) -> str:
    """Content-addressed key; the two-character fan-out keeps directory listings small."""
    return f"images/{sha256[:2]}/{sha256}.{fmt.lower()}"


class StoreError(SekeError, RuntimeError):
    """The object store refused or could not serve a request."""


def check_key(key: str) -> str:
    """`key` if it is a relative object key that cannot climb out of a folder it is joined to.

    S3 accepts any key, `../../x` included; a key like that, downloaded to
    `folder / key`, would land outside `folder`. Keys are relative POSIX paths
    with no `.`/`..` segments, no backslash and no NUL.
    """
    if not key:
        return key  # the whole store (a listing prefix)
    parts = key.rstrip("/").split("/")
    if key.startswith("/") or "\\" in key or "\0" in key or any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"object key {key!r} could point outside its folder: keys are relative paths without '.' or '..' segments")
    return key


def confined_path(folder: Path, relative: str) -> Path:
    """`folder / relative`, refused (StoreError) when `relative` would leave `folder`."""
    check_key(relative)
    path = (Path(folder) / relative).resolve()
    if Path(folder).resolve() not in path.parents:
        raise StoreError(f"{relative!r} points outside {folder}")
    return path


class ObjectStore(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def upload_file(self, key: str, path: Path) -> None: ...
    def download_file(self, key: str, path: Path) -> None: ...
    def list_keys(self, prefix: str) -> Iterator[str]: ...
    def list_objects(self, prefix: str) -> Iterator[tuple[str, float]]: ...
    def delete(self, key: str) -> None: ...
    def uri(self, key: str) -> str: ...


class LocalStore:
    """A directory that behaves like a bucket: atomic writes, keys as relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if path != self.root and self.root not in path.parents:
            raise StoreError(f"object key {key!r} points outside the store at {self.root}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a crash never leaves a half-written object under its key.
        # mkstemp creates the file 0600, so no chmod is needed (this runs once per imported image).
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(name, path)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"no object {key!r} in {self.root}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def upload_file(self, key: str, path: Path) -> None:
        self.put_bytes(key, Path(path).read_bytes())

    def download_file(self, key: str, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(self.get_bytes(key))

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        candidates = base.rglob("*") if base.is_dir() else base.parent.glob(base.name + "*")
        for path in sorted(candidates):
            if path.is_file() and not path.name.startswith(".tmp-"):
                yield path.relative_to(self.root).as_posix()

    def list_objects(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, modification time as a Unix timestamp) of each object under `prefix`."""
        for key in self.list_keys(prefix):
            try:
                yield key, self._path(key).stat().st_mtime
            except FileNotFoundError:
                continue  # removed since it was listed

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()


class S3Store:
    """boto3 against any S3-compatible endpoint; keys live under an optional prefix."""

    def __init__(self, bucket: str, prefix: str, client: object) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)  # type: ignore[attr-defined]

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))  # type: ignore[attr-defined]
        except ClientError as exc:
            raise StoreError(f"cannot read s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))  # type: ignore[attr-defined]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StoreError(f"cannot reach s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return True

    def upload_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))  # type: ignore[attr-defined]

    def download_file(self, key: str, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._key(key), str(path))  # type: ignore[attr-defined]

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for item in page.get("Contents", []):
                yield item["Key"][strip:]

    def list_objects(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, last-modified time as a Unix timestamp) of each object under `prefix`."""
        paginator = self.client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for item in page.get("Contents", []):
                yield item["Key"][strip:], item["LastModified"].timestamp()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))  # type: ignore[attr-defined]

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def open_store(settings: Settings) -> ObjectStore:
    """The store named by SEKE_STORE_URL (default: <state_dir>/store)."""
    url = settings.store_url or (settings.resolved_state_dir / "store").as_uri()
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"SEKE_STORE_URL={url!r} names no bucket; expected s3://bucket/prefix")
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            # Ingest uploads from a pool of threads sharing this client: room for each one's connection.
            config=Config(max_pool_connections=64),
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None,
            aws_secret_access_key=(
                settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
            ),
        )
        return S3Store(parsed.netloc, parsed.path, client)
    raise StoreError(f"SEKE_STORE_URL={url!r}: expected s3://bucket/prefix or file:///dir")


def upload_dir(store: ObjectStore, local_dir: Path, prefix: str) -> str:
    """Upload every file under local_dir to prefix/<relative path>; returns the prefix's URI."""
    prefix = prefix.rstrip("/")
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            store.upload_file(f"{prefix}/{path.relative_to(local_dir).as_posix()}", path)
    return store.uri(prefix)


def download_prefix(store: ObjectStore, prefix: str, local_dir: Path) -> Path:
    """Download every object under prefix/ into local_dir (mirroring the key layout)."""
    prefix = prefix.rstrip("/") + "/"
    keys = [key for key in store.list_keys(prefix) if not key.endswith("/")]  # not S3 "folder" markers
    if not keys:
        raise StoreError(f"nothing stored under {store.uri(prefix)}")
    # Check every key before writing anything: a listing holding `../` keys writes nothing.
    targets = [(key, confined_path(local_dir, key[len(prefix) :])) for key in keys]
    for key, target in targets:
        store.download_file(key, target)
    return Path(local_dir)
