"""A command with no daemon to hand it to: unlock, connect, run it, disconnect.

This is the Twisted side of the CLI, imported only when it is needed (cli.py stays
light for the daemon path).  One-shot commands call the same ``Methods`` the daemon
serves, so the output and exit codes are the same either way.  ``daemon`` and ``chat``
run here too, as long-lived processes.
"""

import sys

from twisted.internet import defer, threads
from twisted.logger import (
    FileLogObserver, FilteringLogObserver, LogLevel, LogLevelFilterPredicate, formatEvent,
    globalLogBeginner, textFileLogObserver)
from twisted.python.failure import Failure

from securechat.client import cli, commands, linking
from securechat.client.methods import Methods, Verifications, as_command_failed
from securechat.client.progress import ProgressBar
from securechat.client.render import EscapingStream
from securechat.client.exit_codes import (
    EXIT_AUTH, EXIT_UNREACHABLE, EXIT_UNTRUSTED, EXIT_USAGE)
from securechat.client.rpc import CommandFailed, DaemonConnection
from securechat.client.session import Client, ClientError, require_empty
from securechat.client.unlock import (
    UnlockingNotice, read_changed_password, read_new_password, read_password,
    read_recovery_key)
from securechat.crypto.recovery import RecoveryKey, RecoveryKeyTypo
from securechat.crypto.fingerprint import key_fingerprint
from securechat.timestamps import utc_date


def log_to_stderr(ours=LogLevel.warn, stream=None):
    """Warnings and errors (never message contents) go to stderr, and securechat's own
    lines from level ``ours`` (the daemon says what it serves and its connection state).
    With ``stream`` (the chat's, which moves them onto its screen, where each line
    already has its time) they are the bare text, without time and logger name."""
    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    levels.setLogLevelForNamespace("securechat", ours)
    if stream is None:
        lines = textFileLogObserver(EscapingStream(sys.stderr))
    else:
        lines = FileLogObserver(EscapingStream(stream), lambda event: formatEvent(event) + "\n")
    observer = FilteringLogObserver(lines, [levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run_reactor(main):
    """Run ``main(reactor)`` (a coroutine function) to its end; its result, or its error
    raised here (like task.react, without exiting).  Ctrl-C (the reactor stops on SIGINT)
    cancels ``main`` first, so what it was making is undone (a registration's new key
    store), then raises KeyboardInterrupt here."""
    from twisted.internet import reactor

    outcome, running, interrupted = [], [], []

    def start():
        running.append(defer.ensureDeferred(main(reactor)))
        running[0].addBoth(finished)

    def finished(result):
        outcome.append(result)
        if not interrupted:
            reactor.stop()

    def stopping():
        if running and not running[0].called:  # a signal stops it, not finished()
            interrupted.append(True)
            running[0].cancel()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.run()
    if interrupted or not outcome:
        raise KeyboardInterrupt
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def run(settings, args, request=None):
    """Run the command ``args`` names without a daemon; its exit code.  ``request`` is the
    one-shot command's ``(method, params)`` (commands.request_for)."""
    if args.command == "daemon":
        from securechat.client.daemon import serve

        return serve(settings)
    if args.command == "chat":
        from securechat.client.chat import LogLines, run_chat

        log_lines = LogLines()
        log_to_stderr(stream=log_lines)
        return run_reactor(lambda reactor: run_chat(reactor, settings, log_lines))
    log_to_stderr()
    # Passwords are asked before the reactor runs (unlock.py says why).
    if args.command == "register":
        password = read_new_password(settings)
        invite = getattr(args, "invite", None)
        return run_reactor(lambda reactor: register(reactor, settings, password, invite))
    if args.command == "password":
        refuse_beside_daemon(settings)
        password = read_password(settings)
        new_password = read_changed_password()
        if new_password == password:
            raise CommandFailed("the new password is the current one: nothing to change",
                                EXIT_USAGE)
        return run_reactor(lambda reactor: change_password(reactor, settings, password,
                                                           new_password))
    if args.command == "recover":
        return recover_command(settings)
    if args.command == "devices" and args.devices_command == "recovery-key":
        refuse_beside_daemon(settings, "make a new recovery key")
        password = read_password(settings)
        return run_reactor(lambda reactor: new_recovery_key(reactor, settings, password))
    if args.command == "account":  # its one action: delete
        refuse_beside_daemon(settings, "delete the account")
        password = read_password(settings)
        confirm_deletion(settings.username)
        return run_reactor(lambda reactor: delete_account(reactor, settings, password))
    if args.command == "devices" and args.devices_command in commands.LINKING:
        if args.devices_command == "approve":
            refuse_beside_daemon(settings, "approve the new device")
        password = read_password(settings)
        run = link_device if args.devices_command == "link" else approve_device
        return run_reactor(lambda reactor: run(reactor, settings, password, args))
    password = read_password(settings)
    if args.command == "verify":
        return run_reactor(lambda reactor: verify(reactor, settings, password, args.user))
    method, params = request
    if (method == "outbox" or method == "history" and "user" in params
            or method == "fingerprint" and "user" not in params):
        return run_reactor(lambda reactor: offline(reactor, settings, password, args, method,
                                                   params))
    return run_reactor(lambda reactor: one_shot(reactor, settings, password, args, method,
                                                params))


async def open_or_reconnect(client, keep_trying):
    """Open ``client``; when the server is unreachable and ``keep_trying``, keep the store
    open and go on reconnecting in the background instead of failing."""
    try:
        with UnlockingNotice():  # only around the unlock: the connection's states are logged
            client.unlock()
        await client.open()
    except ClientError as e:
        if e.exit_code != EXIT_UNREACHABLE or not keep_trying:
            raise
        client.reconnect()


async def opened(reactor, settings, password, controls=None, keep_trying=False):
    """A Client unlocked and (unless ``keep_trying`` found the relay unreachable: then it
    reconnects meanwhile) logged in, with what was waiting processed, so a command sees
    the state ``inbox`` would; CommandFailed when that fails.  ``controls`` (Verifications,
    linking.Links) receives the decrypted control messages."""
    client = Client(reactor, settings, password,
                    on_control=controls.control if controls else None)
    try:
        await open_or_reconnect(client, keep_trying)
        if client.state == "connected":
            await client.drain(timeout=60)
    except Exception as e:
        client.close()
        raise as_command_failed(e) from None
    return client


async def one_shot(reactor, settings, password, args, method, params):
    """A message to send waits for a reconnect (its outbox keeps it), and so does an
    ``inbox --wait``; ``history NAME`` reads the local store when the relay is down, and
    ``fingerprint USER`` answers from the contact this device knows; every other command
    needs the relay now."""
    keep_trying = (method in ("send", "say", "broadcast", "fingerprint", *commands.CHANGES)
                   or params.get("wait", 0) > 0
                   or method == "history" and "name" in params)
    client = await opened(reactor, settings, password, keep_trying=keep_trying)
    try:
        methods = Methods(client, Verifications())
        progress = ProgressBar()
        while True:
            try:
                result = await methods.call(method, params, progress=progress)
            finally:
                if client.state == "removed":  # meanwhile, by another device: for good
                    raise CommandFailed(client.state_detail, EXIT_AUTH)
            commands.show_result(args, result)
            if not result.get("more"):
                cli.check_complete(result)
                return 0
            params = commands.next_page(params)
    finally:
        await client.disconnect()


async def offline(reactor, settings, password, args, method, params):
    """``outbox``, ``history --user`` and the own ``fingerprint``: the key store only, no
    connection (they work while the relay is down)."""
    client = Client(reactor, settings, password)
    try:
        with UnlockingNotice():
            client.unlock()
        commands.show_result(args, await Methods(client, Verifications()).call(method, params))
        return 0
    except Exception as e:
        raise as_command_failed(e) from None
    finally:
        client.close()


async def register(reactor, settings, password, invite=None):
    client = Client(reactor, settings, password)
    try:
        with UnlockingNotice():
            await client.register(invite)
    except Exception as e:
        raise as_command_failed(e) from None
    print(f"registered {client.user}, device {client.device}")
    print(f"your fingerprint: {key_fingerprint(client.crypto.identity_key)}")
    await show_new_recovery_key(client, KEEP_THE_KEY, "the account is registered, but no "
                                                      "recovery key was set")
    await client.disconnect()
    return 0


KEEP_THE_KEY = ("write the recovery key down and keep it apart from this machine: with it, "
                "'securechat recover' brings your account back when every device is lost; "
                "without it, a lost account stays lost.  It is shown this once.")


async def show_new_recovery_key(client, note, failed):
    """Make a new recovery key and print it on a line of its own, once, then ``note``;
    when the relay does not take it, say so (``failed``: what is done all the same) on
    stderr and how to try again.  The command still succeeds: what it was for is done."""
    try:
        key = await client.new_recovery_key()
    except Exception as e:
        print(f"securechat: {failed} ({as_command_failed(e)}): run 'securechat devices "
              "recovery-key' to make one", file=sys.stderr)
        return
    print(f"recovery key: {key}")
    print(note)


async def new_recovery_key(reactor, settings, password):
    """``devices recovery-key``: unlock, log in, replace the account's recovery key."""
    client = await opened(reactor, settings, password)
    try:
        key = await client.new_recovery_key()
    except Exception as e:
        raise as_command_failed(e) from None
    finally:
        await client.disconnect()
    print(f"recovery key: {key}")
    print("the previous recovery key no longer works.  " + KEEP_THE_KEY)
    return 0


def recover_command(settings):
    """``recover``: an empty (or absent) data directory, the recovery key (a typo, caught by its
    checksum, is a usage error naming it: nothing is sent), then the new password;
    asked before the reactor runs (unlock.py says why)."""
    try:
        require_empty(settings.data_dir)
    except ClientError as e:
        raise as_command_failed(e) from None
    try:
        key = RecoveryKey.parse(read_recovery_key())
    except RecoveryKeyTypo as e:
        raise CommandFailed(str(e), EXIT_USAGE) from None
    password = read_changed_password()
    return run_reactor(lambda reactor: recover(reactor, settings, key, password))


async def recover(reactor, settings, key, password):
    """Make this machine the account's only device (Client.recover), then give the
    account a new recovery key: the one typed here may linger (a terminal, an
    environment), and whoever holds it could take the account over again."""
    client = Client(reactor, settings, password)
    try:
        with UnlockingNotice():
            await client.recover(key)
    except Exception as e:
        raise as_command_failed(e) from None
    print(f"recovered {client.user}: this device ({client.device}) is now its only device; "
          "every other device was removed from the account")
    print(f"your fingerprint: {key_fingerprint(client.crypto.identity_key)} (unchanged: "
          "contacts who verified you still see you verified)")
    await show_new_recovery_key(
        client, "this new recovery key replaces the one you typed, which no longer works: "
                "that one was typed on this machine and may linger (in a terminal, an "
                "environment, a note).  " + KEEP_THE_KEY,
        "the account is recovered, but no new recovery key was set, so the one you typed "
        "still works")
    await client.disconnect()
    return 0


def refuse_beside_daemon(settings, doing="change the password"):
    """``password`` re-wraps the key store, which a running daemon (or a chat's) holds open
    with the old password, and ``account delete`` removes it: they stop before asking
    anything."""
    connection = DaemonConnection.find(settings.data_dir)
    if connection is not None:
        connection.close()
        raise CommandFailed(f"a securechat daemon serves {settings.data_dir}: stop the "
                            f"daemon (or the chat) first, then {doing}")


async def change_password(reactor, settings, password, new_password):
    """Unlock with ``password`` (wrong: exit 3), log in (the relay unreachable: exit 4),
    then change it to ``new_password`` on the relay and in the store (Client.change_password
    says in which order and why); nothing is changed when any of it fails."""
    client = await opened(reactor, settings, password)
    try:
        await client.change_password(new_password)
    except Exception as e:
        raise as_command_failed(e) from None
    finally:
        await client.disconnect()
    print("password changed")
    return 0


def confirm_deletion(user):
    """The user name typed again on standard input (a script can pipe it), else nothing is
    deleted (exit 1)."""
    print(f"Type your user name ({user}) to delete the account for good:", flush=True)
    if sys.stdin.readline().strip() != user:
        raise CommandFailed(f"that is not {user}: nothing was deleted")


async def delete_account(reactor, settings, password):
    """Unlock with ``password`` (wrong: exit 3), log in (the relay unreachable: exit 4),
    delete the account on the relay, then remove this device's data directory: its keys
    log in nowhere any more, and its name may belong to someone else one day."""
    client = await opened(reactor, settings, password)
    try:
        result = await client.delete_account()
    except Exception as e:
        await client.disconnect()
        raise as_command_failed(e) from None
    client.discard_store()
    print(f"account {client.user} deleted: {result['devices']} device(s) removed from the relay, "
          f"and {settings.data_dir} from this machine")
    for room, heir in sorted(result["heirs"].items()):
        print(f"room {room} now belongs to {heir}")
    print(f"the name {client.user} can be registered again from "
          f"{utc_date(result['name_frees_at'])}")
    return 0


async def ask_yes():
    """The person's answer to "Do they match?" on standard input (read in a thread, so the
    reactor keeps receiving meanwhile): yes only for y or yes."""
    print("Do they match? [y/N] ", flush=True)
    answer = await threads.deferToThread(sys.stdin.readline)
    return answer.strip().lower() in ("y", "yes")


def show(text):
    print(text, flush=True)


async def verify(reactor, settings, password, user):
    """Compare emoji with ``user`` on this terminal."""
    verifications = Verifications(settings.verify_timeout)
    client = await opened(reactor, settings, password, verifications)
    try:
        await verifications.run(client, user, ask_yes, show)
        return 0
    except Exception as e:
        return untrusted_exit(e)
    finally:
        await client.disconnect()


def untrusted_exit(error):
    """A failed exchange (verification, link) is said on stdout with exit 7; any other
    error is raised as the command's failure."""
    failure = as_command_failed(error)
    if isinstance(failure, CommandFailed) and failure.exit_code == EXIT_UNTRUSTED:
        print(failure)
        return EXIT_UNTRUSTED
    raise failure from None


async def link_device(reactor, settings, password, args):
    """``devices link``: make this machine's new device, print its code, wait for the
    approval and compare emoji on this terminal (linking.link)."""
    links = linking.Links()
    client = Client(reactor, settings, password, on_control=links.control)
    try:
        approver = await linking.link(client, links, ask_yes, show, settings.verify_timeout)
    except Exception as e:
        return untrusted_exit(e)
    finally:
        await client.disconnect()
    print(f"linked: this device ({client.device}) is now one of {client.user}'s devices "
          f"(approved by {approver})")
    return 0


async def approve_device(reactor, settings, password, args):
    """``devices approve CODE``: the exchange with the new device on this terminal, then
    the list signed and the account key handed over (linking.approve)."""
    links = linking.Links()
    client = await opened(reactor, settings, password, links)
    try:
        version = await linking.approve(client, links, args.code, ask_yes, show,
                                        settings.verify_timeout)
    except Exception as e:
        return untrusted_exit(e)
    finally:
        await client.disconnect()
    print(f"linked device {args.code} to {client.user}'s account (device list version "
          f"{version})")
    return 0
