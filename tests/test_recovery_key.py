"""The recovery key as a person writes it (groups, checksum, typos named), the keys derived
from it, what ``register`` says when the relay refuses it, and the chat's and daemon's
refusal to make one (no sockets)."""

import pytest
import pytest_twisted

from securechat.client.methods import Methods
from securechat.client.rpc import CommandFailed
from securechat.client.session import ClientError
from securechat.client.standalone import show_new_recovery_key
from securechat.crypto.recovery import CHARACTERS, RecoveryKey, RecoveryKeyTypo


def test_the_key_reads_back_as_written_and_as_a_person_may_type_it():
    """14 groups of 4 characters; reading ignores case, spaces and hyphens and takes O, I
    and L for 0, 1 and 1."""
    key = RecoveryKey.generate()
    groups = key.text.split(" ")
    assert len(groups) == 14 and all(len(group) == 4 for group in groups)
    sloppy = key.text.lower().replace(" ", "-").replace("0", "o").replace("1", "l")
    assert RecoveryKey.parse(sloppy).text == key.text
    assert RecoveryKey.parse(sloppy).public_key == key.public_key


def test_a_mistyped_character_is_caught_by_the_checksum_and_its_group_named():
    """One character changed: RecoveryKeyTypo naming the checksum and (when one group alone
    can be at fault) that group."""
    key = RecoveryKey.generate()
    chars = list(key.text.replace(" ", ""))
    chars[30] = "X" if chars[30] != "X" else "Y"
    with pytest.raises(RecoveryKeyTypo, match=r"does not match its checksum.*group 8"):
        RecoveryKey.parse("".join(chars))


@pytest.mark.parametrize("mangle, named", [
    (lambda text: text + "7", rf"57 characters instead of {CHARACTERS}"),
    (lambda text: text[:-5], rf"52 characters instead of {CHARACTERS}"),
    (lambda text: "U" + text[1:], r"'U' \(character 1 as typed\)"),
    (lambda text: text[:10] + "!" + text[11:], r"'!' \(character 11 as typed\)"),
])
def test_a_key_of_the_wrong_length_or_alphabet_is_named(mangle, named):
    """A missing or extra character, or one no key holds, is named with where it is."""
    with pytest.raises(RecoveryKeyTypo, match=named):
        RecoveryKey.parse(mangle(RecoveryKey.generate().text))


def test_the_derived_keys_differ_and_the_backup_opens_with_its_key_only():
    """The signing key and the backup key are distinct derivations, different for every
    recovery key; a sealed seed opens with its own key and no other."""
    first, second = RecoveryKey.generate(), RecoveryKey.generate()
    assert bytes(first.signing_key) != bytes(first.backup_box)
    assert first.public_key != second.public_key
    sealed = first.seal(b"s" * 32)
    assert first.open(sealed) == b"s" * 32
    assert RecoveryKey.parse(first.text).open(sealed) == b"s" * 32
    with pytest.raises(ValueError, match="does not open"):
        second.open(sealed)


class RefusingClient:
    """A client whose relay refuses ``recovery.set`` (what ``register`` must report)."""

    async def new_recovery_key(self):
        raise ClientError("the relay refused the new recovery key: not now")


@pytest_twisted.ensureDeferred
async def test_a_refused_recovery_key_is_reported_with_what_to_run(capsys):
    """When the relay refuses the new key, nothing is printed as a recovery key, and stderr
    says what is done, why, and to run `devices recovery-key`."""
    await show_new_recovery_key(RefusingClient(), "keep it", "the account is registered, but "
                                                             "no recovery key was set")
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("securechat: the account is registered, but no recovery key was set (the "
                   "relay refused the new recovery key: not now): run 'securechat devices "
                   "recovery-key' to make one\n")


@pytest_twisted.ensureDeferred
async def test_the_chat_and_the_daemon_send_a_new_recovery_key_to_the_cli():
    """The method behind `/devices recovery-key` (the chat, a daemon) makes no key: a usage
    error (2) saying to run the command with no daemon or chat."""
    with pytest.raises(CommandFailed, match="while no daemon or chat runs") as failed:
        await Methods(client=None, verifications=None).call("devices.recovery-key", {})
    assert failed.value.exit_code == 2
