"""The object store behaves the same on a local directory and on a real S3 endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.store import StoreError, image_key, open_store


@pytest.fixture(params=["local", "s3"])
def store_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "s3":
        return request.getfixturevalue("s3_settings")
    return settings


def test_round_trip_listing_and_files(store_settings: Settings, tmp_path: Path) -> None:
    store = open_store(store_settings)
    key = image_key("ab" * 32, "PNG")
    assert key == f"images/ab/{'ab' * 32}.png"
    assert not store.exists(key)
    store.put_bytes(key, b"payload")
    store.put_bytes(key, b"payload")  # idempotent
    assert store.exists(key)
    assert store.get_bytes(key) == b"payload"

    source = tmp_path / "model.bin"
    source.write_bytes(b"weights")
    store.upload_file("checkpoints/run1/model.bin", source)
    store.download_file("checkpoints/run1/model.bin", tmp_path / "back" / "model.bin")
    assert (tmp_path / "back" / "model.bin").read_bytes() == b"weights"
    assert sorted(store.list_keys("checkpoints/")) == ["checkpoints/run1/model.bin"]
    assert store.uri(key).startswith("s3://" if store_settings.store_url.startswith("s3") else "file://")


def test_missing_object_names_the_key(store_settings: Settings) -> None:
    store = open_store(store_settings)
    with pytest.raises(StoreError, match="nothere"):
        store.get_bytes("images/zz/nothere.png")


def test_local_store_refuses_keys_outside_its_root(settings: Settings) -> None:
    with pytest.raises(StoreError, match="outside"):
        open_store(settings).put_bytes("../escape.txt", b"x")


def test_bad_store_url_says_what_is_expected(settings: Settings) -> None:
    with pytest.raises(StoreError, match="expected s3://bucket/prefix"):
        open_store(settings.model_copy(update={"store_url": "ftp://host/x"}))
