"""Settings: URL normalisation, and secrets that never leak into reprs, snapshots or run records."""

from core.config import Settings
from tasks.vllm import VLLMConfig


def test_database_url_gets_the_psycopg_driver() -> None:
    assert Settings(database_url="postgres://u:p@h/db").database_url.get_secret_value() == "postgresql+psycopg://u:p@h/db"
    assert Settings(database_url="").database_url is None


def test_secrets_stay_out_of_reprs_and_snapshots() -> None:
    settings = Settings(
        database_url="postgresql://u:db-secret@h/db",
        s3_secret_access_key="s3-secret",
        vllm_api_key="sk-secret",
        vllm_base_url="http://127.0.0.1:9/v1",
    )
    for text in (repr(settings), str(settings.public_snapshot()), str(VLLMConfig.from_settings(settings).public_snapshot())):
        assert "db-secret" not in text and "s3-secret" not in text and "sk-secret" not in text
