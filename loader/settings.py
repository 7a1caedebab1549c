"""Connection and run settings: process environment, then `.env`, then defaults; CLI flags win.

Variable names and defaults follow the original tool (MAPPING.md 6.1, 6.5). Secrets are
`SecretStr` so that they never show in a repr, a log line or an error message.
"""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    mongodb_url: SecretStr = Field(SecretStr("mongodb://localhost:27017"), alias="MONGODB_URL")
    mongodb_database: str = Field("default", alias="MONGODB_DATABASE")
    postgres_host: str = Field("localhost", alias="POSTGRES_HOST")
    postgres_port: int = Field(5432, alias="POSTGRES_PORT")
    postgres_database: str = Field("database", alias="POSTGRES_DATABASE")
    postgres_user: str = Field("user", alias="POSTGRES_USER")
    postgres_password: SecretStr = Field(SecretStr(""), alias="POSTGRES_PASSWORD")
    postgres_schema: str = Field("public", alias="POSTGRES_SCHEMA")
    source_timezone: str = Field("Europe/Paris", alias="SOURCE_TIMEZONE")
    batch_size: int = Field(5000, alias="BATCH_SIZE", gt=0)
    # Deltas start this many seconds before the watermark (clock skew between app servers, 5.2).
    watermark_overlap_seconds: int = Field(0, alias="WATERMARK_OVERLAP_SECONDS", ge=0)
    # Collections staged in parallel.
    extract_workers: int = Field(2, alias="EXTRACT_WORKERS", gt=0)
    # Parallel cursors (contiguous _id ranges) reading a large collection's full snapshot; pays on
    # a server that serves _id ranges from its index (mongod), not on one that scans (SecantusDB).
    extract_ranges: int = Field(1, alias="EXTRACT_RANGES", gt=0)
    # Tables transformed at the same time (each once the tables it references are done).
    transform_workers: int = Field(2, alias="TRANSFORM_WORKERS", gt=0)
    # Tables created and loaded at the same time by a load (each once the tables it references
    # are done); a table that exists already is written alone.
    load_workers: int = Field(2, alias="LOAD_WORKERS", gt=0)
    # DuckDB's memory (extract, transform, load); beyond it, DuckDB spills to staging/tmp.
    duckdb_memory_limit: str = Field("1GB", alias="DUCKDB_MEMORY_LIMIT")
    # Seconds to wait for a server before giving up with a one-line error.
    connect_timeout: int = Field(5, alias="CONNECT_TIMEOUT", gt=0)
    # Remote mode (MAPPING.md 6.1, 6.2): `remote` (any case) reaches that server through an SSH tunnel.
    transfer_source: str = Field("local", alias="TRANSFER_SOURCE")
    transfer_destination: str = Field("local", alias="TRANSFER_DESTINATION")
    remote_server_url: str | None = Field(None, alias="REMOTE_SERVER_URL")
    remote_server_port: int = Field(22, alias="REMOTE_SERVER_PORT", gt=0)
    remote_server_user: str | None = Field(None, alias="REMOTE_SERVER_USER")
    remote_server_password: SecretStr | None = Field(None, alias="REMOTE_SERVER_PASSWORD")
    # A private key file; without key nor password, the SSH agent and ~/.ssh/id_* are tried.
    remote_server_key: Path | None = Field(None, alias="REMOTE_SERVER_KEY")
    # The remote server's host key must be listed here (or in /etc/ssh/ssh_known_hosts).
    ssh_known_hosts: Path = Field(Path("~/.ssh/known_hosts"), alias="SSH_KNOWN_HOSTS")
    # Host and port as seen from the remote server.
    remote_mongodb_url: SecretStr = Field(SecretStr("mongodb://localhost:27017"), alias="REMOTE_MONGODB_URL")
    remote_mongodb_database: str = Field("default", alias="REMOTE_MONGODB_DATABASE")
    remote_postgres_port: int = Field(5432, alias="REMOTE_POSTGRES_PORT", gt=0)
    remote_postgres_database: str = Field("database", alias="REMOTE_POSTGRES_DATABASE")
    remote_postgres_user: str = Field("postgres", alias="REMOTE_POSTGRES_USER")
    remote_postgres_password: SecretStr = Field(SecretStr(""), alias="REMOTE_POSTGRES_PASSWORD")
    staging_dir: Path = Field(Path("staging"), alias="LOADER_STAGING_DIR")
    config_path: Path = Field(Path("config/schemas.yaml"), alias="LOADER_CONFIG")

    @field_validator("source_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Paris or UTC)") from None
        return value

    def postgres_conninfo(self) -> dict[str, object]:
        """Keyword arguments for psycopg.connect (the password stays out of any string we print)."""
        return {
            "host": self.postgres_host,
            "port": self.postgres_port,
            "dbname": self.postgres_database,
            "user": self.postgres_user,
            "password": self.postgres_password.get_secret_value() or None,
            "connect_timeout": self.connect_timeout,
            "application_name": "loader",
        }

    def postgres_label(self) -> str:
        return f"postgresql://{self.postgres_user}@{self.postgres_host}:{self.postgres_port}/{self.postgres_database}"

    def mongodb_label(self) -> str:
        return f"{redact_url(self.mongodb_url.get_secret_value())} database {self.mongodb_database}"


def load_settings(env_file: Path | None = None, **overrides: object) -> Settings:
    """Settings from the environment and `env_file` (default `.env`), then non-None overrides."""
    given = {k: v for k, v in overrides.items() if v is not None}
    for secret in ("mongodb_url", "postgres_password"):
        if isinstance(given.get(secret), str):
            given[secret] = SecretStr(given[secret])
    return Settings(_env_file=env_file or ".env", **given)


_USERINFO = re.compile(r"(?P<scheme>[a-z+]+://)(?P<userinfo>[^@/]*)@")


def redact_url(url: str) -> str:
    """mongodb://user:secret@host -> mongodb://user:***@host (for messages only)."""
    def hide(match: re.Match[str]) -> str:
        user = match["userinfo"].split(":", 1)[0]
        return f"{match['scheme']}{user}:***@"

    return _USERINFO.sub(hide, url)
