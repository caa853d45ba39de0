"""Unit tests of the ini file loader: defaults, and errors that name file, section and key."""

import os

import pytest

from securechat import config


def write(tmp_path, text):
    path = tmp_path / "s.ini"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file():
    """No file means TLS on 127.0.0.1:6697 with SQLite in ./securechat-data."""
    settings = config.load(None)
    assert (settings.interface, settings.port) == ("127.0.0.1", 6697)
    assert settings.data_dir == os.path.abspath("securechat-data")
    assert settings.database == os.path.join(settings.data_dir, "securechat.sqlite3")
    assert not settings.uses_postgres


def test_shipped_example_config_is_valid():
    """etc/securechat.ini loads and documents every option with its default."""
    path = os.path.join(os.path.dirname(__file__), "..", "etc", "securechat.ini")
    config.load(path)
    text = open(path).read()
    for option in config.OPTIONS:
        assert f"{option.key} = {option.default}" in text, option.key


@pytest.mark.parametrize("text, words", [
    ("[server]\nport = 99999\n", "[server] port"),
    ("[server]\nport = http\n", "[server] port"),
    ("[server]\ninterface = example\n", "[server] interface"),
    ("[store]\ndatabase = mysql://x\n", "[store] database"),
    ("[server]\nprot = 1\n", "[server] prot: unknown key"),
    ("[sever]\n", "[sever]: unknown section"),
    ("[tls]\ncertificate = a.pem\n", "[tls] certificate and private_key"),
    ("[tls]\nkey_exchange = quantum\n", "[tls] key_exchange"),
    ("[limits]\nrequest_burst = 0\n", "[limits] request_burst"),
    ("[limits]\noutput_budget_bytes = 4MB\n", "must be a number of bytes, at least 2097152"),
    ("[server]\nport = http\n", "must be a port number from 0 to 65535"),
    ("[limits]\nrequest_burst = lots\n", "must be a positive integer"),
    ("[limits]\nlogin_timeout_seconds = 30s\n", "must be a positive number of seconds"),
    ("[accounts]\nmax_devices = 11\n", "must be a number of devices from 1 to 10"),
    ("not an ini", "not a valid ini file"),
])
def test_bad_values_name_file_section_and_key(tmp_path, text, words):
    """Every bad value stops loading with the file and the key named, and says what the key
    wants (never Python's own "invalid literal for int()")."""
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    assert str(info.value).startswith(path)
    assert words in str(info.value)
    assert "literal" not in str(info.value) and "float" not in str(info.value)


@pytest.mark.parametrize("old, new", [
    ("login_attempts_per_account", "login_failures_per_account"),
    ("login_attempts_per_address", "login_failures_per_address"),
])
def test_a_renamed_key_is_named_with_what_it_became(tmp_path, old, new):
    """A key of an earlier release stops loading with its new name, what changed, and
    where to read more, instead of a bare "unknown key"."""
    path = write(tmp_path, f"[limits]\n{old} = 10\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: [limits] {old}: renamed to {new} (only failed")
    assert message.endswith("; see docs/configuration.rst") and "unknown" not in message


def test_postgres_url_is_kept_and_paths_are_resolved(tmp_path):
    """A postgresql:// URL is used as is; relative paths live in the data dir."""
    path = write(tmp_path, f"[server]\ndata_dir = {tmp_path}\n[tls]\ncertificate = c.pem\n"
                 "private_key = k.pem\n[store]\ndatabase = postgresql://u@127.0.0.1/db\n")
    settings = config.load(path)
    assert settings.uses_postgres and settings.database == "postgresql://u@127.0.0.1/db"
    assert settings.certificate == str(tmp_path / "c.pem")
