"""Database URLs in logs and errors: the password hidden whole, whatever it holds."""

import pytest

from securechat import config as config_module
from securechat import database_url

PIECES = ("alphaPW", "bravoPW", "charliePW", "deltaPW")
ENCODED = "postgresql://chat:alphaPW%40bravoPW%2FcharliePW%3AdeltaPW@db.example:5432/chat"


def test_redact_hides_an_encoded_password_whole():
    """Every piece of a percent-encoded password holding @, / and : is hidden."""
    assert database_url.redact(ENCODED) == "postgresql://chat:***@db.example:5432/chat"


def test_redact_hides_a_password_parameter_and_an_unencoded_password():
    """A password= parameter is hidden, and so is a password written with a raw '@' (the
    last '@' ends it, so nothing of it shows as a host name)."""
    url = "postgresql://chat:alphaPW@bravoPW@db/chat?password=charliePW&sslmode=require"
    shown = database_url.redact(url)
    assert shown == "postgresql://chat:***@db/chat?password=***&sslmode=require"


def test_scrub_removes_the_password_from_a_driver_message_in_every_form():
    """An error quoting the password, encoded or decoded, keeps its words but not it; and
    it becomes one line."""
    message = ('bad token "alphaPW%40bravoPW%2FcharliePW%3AdeltaPW"\n'
               "or alphaPW@bravoPW/charliePW:deltaPW")
    scrubbed = database_url.scrub(message, ENCODED)
    assert scrubbed == 'bad token "***" or ***'
    assert not any(piece in scrubbed for piece in PIECES)


@pytest.mark.parametrize("password", ["alphaPW@bravoPW", "alphaPW/bravoPW"])
def test_a_url_with_an_unencoded_at_or_slash_is_refused_without_being_repeated(
        tmp_path, password):
    """[store] database with a raw '@' or '/' in the password stops start-up, and the
    error shows the URL with the password hidden."""
    path = tmp_path / "relay.ini"
    path.write_text(f"[store]\ndatabase = postgresql://chat:{password}@db/chat\n")
    with pytest.raises(config_module.ConfigError) as refused:
        config_module.load(str(path))
    message = str(refused.value)
    assert "percent-encode" in message and "postgresql://chat:***@db/chat" in message
    assert "alphaPW" not in message and "bravoPW" not in message
