"""The CLI's failure modes: one line on stderr, a non-zero exit, no secrets, no hang."""

from __future__ import annotations

import pytest

from conftest import run_loader
from loader.demo.servers import free_port

SECRET = "s3cret-Passw0rd"


def unreachable() -> dict[str, str]:
    """Settings pointing at closed loopback ports, with passwords that must never be printed."""
    return {
        "MONGODB_URL": f"mongodb://reader:{SECRET}@127.0.0.1:{free_port()}/",
        "MONGODB_DATABASE": "smartdiet",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(free_port()),
        "POSTGRES_DATABASE": "smartdiet",
        "POSTGRES_USER": "loader",
        "POSTGRES_PASSWORD": SECRET,
        "CONNECT_TIMEOUT": "3",
    }


def assert_one_line_failure(result, *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert SECRET not in result.stdout + result.stderr


def test_config_error_stops_before_any_connection(tmp_path):
    bad = tmp_path / "schemas.yaml"
    bad.write_text("tables:\n  users:\n    include_base: true\n    exprot_order: 2\n")
    # Servers are unreachable: a config error must be reported first, without trying them.
    result = run_loader("run", "--config", str(bad), "--staging", str(tmp_path / "s"), env=unreachable(), timeout=15)
    assert_one_line_failure(result, "users", "exprot_order")
    assert "MongoDB" not in result.stderr and "PostgreSQL" not in result.stderr


def test_unreachable_mongodb_is_one_line(tmp_path):
    result = run_loader("extract", "--staging", str(tmp_path), env=unreachable(), timeout=15)
    assert_one_line_failure(result, "MongoDB", "reader:***@127.0.0.1")


def test_unreachable_postgresql_is_one_line_before_extracting(source, tmp_path):
    env = {**unreachable(), **source}
    result = run_loader("run", "--staging", str(tmp_path), env=env, timeout=15)
    assert_one_line_failure(result, "PostgreSQL", "127.0.0.1")
    assert not (tmp_path / "manifest.json").exists(), "nothing should be extracted when the target is down"


def test_load_without_transform_says_what_to_run(target, tmp_path):
    result = run_loader("load", "--staging", str(tmp_path), env=target, timeout=15)
    assert_one_line_failure(result, "loader transform")


def test_invalid_setting_is_one_line(tmp_path):
    result = run_loader("transform", "--staging", str(tmp_path), env={"SOURCE_TIMEZONE": "Mars/Olympus"}, timeout=15)
    assert_one_line_failure(result, "SOURCE_TIMEZONE", "Mars/Olympus")


@pytest.mark.parametrize("command", ["extract", "transform", "load", "run", "tables", "demo"])
def test_every_command_explains_itself(command):
    result = run_loader(command, "--help", env={}, timeout=15)
    assert result.returncode == 0 and "--help" in result.stdout


def test_tables_lists_the_load_order():
    result = run_loader("tables", env={}, timeout=15)
    assert result.returncode == 0, result.stderr
    assert result.stdout.index("companies") < result.stdout.index("users") < result.stdout.index("coachings")


def test_transform_of_a_table_before_its_parent_is_one_line(source, tmp_path):
    # Tables are transformed in parallel threads: the error of one still ends the command in one line.
    env = {**source, "TRANSFORM_WORKERS": "2"}
    assert run_loader("extract", "--table", "users", "--table", "user_events", "--staging", str(tmp_path), env=env).returncode == 0
    result = run_loader("transform", "--table", "users", "--table", "user_events", "--staging", str(tmp_path), env=env)
    assert_one_line_failure(result, "'companies'", "has not been transformed yet")
