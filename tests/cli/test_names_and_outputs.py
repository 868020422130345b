"""Names that become paths and keys are refused up front; `--out` is never emptied without `--force`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.config import Settings
from core.store import LocalStore, StoreError, check_key, download_prefix, open_store
from models.names import check_name, derived_name, slug
from seke.cli import app


def flat(output: str) -> str:
    """The CLI's output without rich's box drawing and line wrapping (it wraps at the terminal width)."""
    return " ".join(output.replace("│", " ").split())


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("SEKE_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("SEKE_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("SEKE_STORE_URL", settings.store_url)
    return settings


@pytest.mark.parametrize("name", ["feid-v1", "feid.v1", "run_2", "A" * 100])
def test_good_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["../../victim-dir", "a/b", "feid v1", "", ".", "..", ".hidden", "-x", "A" * 101, "x\0y"])
def test_names_that_would_escape_or_break_keys_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        check_name(name)


def test_slug_and_derived_names_are_valid_keys_and_names() -> None:
    assert slug("Feid.v1_final") == "feid-v1-final"
    assert check_name(derived_name("feab-store:models/x y/final")) == "feab-store-models-x-y-final"


def test_export_of_an_escaping_name_deletes_nothing(env: Settings, tmp_path: Path) -> None:
    # <state>/exports/../../victim-dir is the state directory's sibling.
    victim = tmp_path / "a" / "victim-dir"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["export", "../../victim-dir"], env={"SEKE_STATE_DIR": str(tmp_path / "a" / "b")})
    assert result.exit_code == 2, result.output
    assert "letters, digits" in flat(result.output)
    assert (victim / "precious.txt").read_text() == "keep me"


def test_export_refuses_a_non_empty_out_without_force(env: Settings, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    result = CliRunner().invoke(app, ["export", "some-run", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "--force" in flat(result.output)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_annotate_refuses_a_bad_run_name_before_any_work(env: Settings) -> None:
    result = CliRunner().invoke(app, ["annotate", "--run", "feid v1"])
    assert result.exit_code == 2 and "letters, digits" in flat(result.output)


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\\b"])
def test_keys_with_dot_segments_are_refused(key: str) -> None:
    with pytest.raises(StoreError):
        check_key(key)


def test_s3_keys_with_dot_dot_never_leave_the_download_folder(s3_settings: Settings, tmp_path: Path) -> None:
    store = open_store(s3_settings)
    store.put_bytes("exports/run/feid.jsonl", b"{}")
    # S3 accepts any key: plant one that climbs out, as a hostile bucket could hold.
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/exports/run/../../../../escaped.txt", Body=b"x")
    target = tmp_path / "deep" / "down" / "here"
    with pytest.raises(StoreError, match="outside"):
        download_prefix(store, "exports/run", target)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not target.exists()  # keys are checked before anything is written


def test_local_checkpoint_refuses_a_store_prefix_that_climbs(tmp_path: Path) -> None:
    from flows.finetune import local_checkpoint

    store = LocalStore(tmp_path / "store")
    for spec in ("store:..", "store:../x", "store:"):
        with pytest.raises((StoreError, FileNotFoundError)):
            local_checkpoint(spec, store, tmp_path / "cache" / "models")


def test_force_never_replaces_the_working_or_home_folder_or_their_parents(env: Settings) -> None:
    for out in (Path.cwd(), Path.home(), Path("/")):
        result = CliRunner().invoke(app, ["export", "some-run", "--out", str(out), "--force"])
        assert result.exit_code == 2 and "folder of its own" in flat(result.output), result.output
