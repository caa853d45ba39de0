"""The server's ini file turned into typed, validated settings.

Every option, its default and its check live in ``OPTIONS`` below, so a
wrong value stops start-up with the file, section, key and problem named,
and ``etc/securechat.ini`` can document exactly this table.
"""

import configparser
import ipaddress
import os
from dataclasses import dataclass

from securechat import database_url
from securechat.wire import MAX_LINE_BYTES, USERNAME_RE

MIN_OUTPUT_BUDGET = 2 * MAX_LINE_BYTES
"""The smallest ``[limits] output_budget_bytes``: the largest frame the relay writes (an
envelope or a history page) always fits in the budget."""


class ConfigError(Exception):
    """A configuration problem, phrased for the operator who has to fix it."""


def _whole_number(text, what):
    """``text`` as an int, or a ValueError saying what was expected (int()'s own message,
    "invalid literal for int() with base 10", means nothing to an operator)."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be {what}, written as digits only") from None


def _port(text):
    port = _whole_number(text, "a port number from 0 to 65535")
    if not 0 <= port <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return port


def _interface(text):
    ipaddress.ip_address(text)  # ValueError names the problem
    return text


def _positive(text):
    value = _whole_number(text, "a positive integer")
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _days(text):
    value = _whole_number(text, "a number of days from 0 to 36500")
    if not 0 <= value <= 36500:
        raise ValueError("must be a number of days from 0 to 36500")
    return value


MAX_DEVICES = 10
"""The most ``[accounts] max_devices`` may be: a 1:1 message of the longest text (one
envelope a device, in one line of at most 1 MiB) to an account with this many devices,
from one with as many, must fit (the client's ``message_size.SEND_FITS_DEVICES``)."""


def _max_devices(text):
    value = _whole_number(text, f"a number of devices from 1 to {MAX_DEVICES}")
    if not 1 <= value <= MAX_DEVICES:
        raise ValueError(f"must be a number of devices from 1 to {MAX_DEVICES}")
    return value


_SIZE_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": 1024 ** 2, "mib": 1024 ** 2,
               "g": 1024 ** 3, "gib": 1024 ** 3}
MAX_FILE_SIZE = 1024 ** 4
"""The largest ``[files] max_size`` and ``quota`` (1 TiB): beyond any disk a relay holds."""


def _size(text):
    """A number of bytes, written as digits with an optional KiB, MiB or GiB (or K, M, G)."""
    what = f"a size in bytes from 1 to {MAX_FILE_SIZE}, such as 104857600 or 100 MiB"
    number = text.strip().lower().rstrip("ibgkm ").strip()
    unit = text.strip().lower()[len(number):].strip()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"must be {what}")
    value = _whole_number(number, what) * _SIZE_UNITS[unit]
    if not 1 <= value <= MAX_FILE_SIZE:
        raise ValueError(f"must be {what}")
    return value


def _minutes(text):
    value = _whole_number(text, "a number of minutes from 1 to 1440")
    if not 1 <= value <= 1440:
        raise ValueError("must be a number of minutes from 1 to 1440")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a positive number of seconds, such as 30 or 2.5") from None
    if not 0 < value < float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _output_budget(text):
    value = _whole_number(text, f"a number of bytes, at least {MIN_OUTPUT_BUDGET}")
    if value < MIN_OUTPUT_BUDGET:
        raise ValueError(f"must be at least {MIN_OUTPUT_BUDGET} bytes (two of the longest frames)")
    return value


class _OnePerCore(int):
    """``workers = auto``: the number of cores, which says where it came from in an error
    (``workers = auto (2 cores)``, not a 2 the operator never wrote)."""

    def __str__(self):
        return f"auto ({int(self)} cores)"


def _workers(text):
    """A number of relay processes, or ``auto``: one per core of this machine."""
    text = text.strip()
    if text == "auto":
        return _OnePerCore(os.cpu_count() or 1)
    value = _whole_number(text, "a number of processes from 1 to 256, or auto (one per core)")
    if not 1 <= value <= 256:
        raise ValueError("must be a number of processes from 1 to 256, or auto (one per core)")
    return value


def _path(text):
    return text.strip()


def _senders(text):
    text = text.strip()
    if text not in ("anyone", "admins"):
        raise ValueError("must be 'anyone' or 'admins'")
    return text


def _user_list(text):
    users = tuple(u.strip() for u in text.split(",") if u.strip())
    for user in users:
        if not USERNAME_RE.fullmatch(user):
            raise ValueError(f"{user!r} is not a valid user name")
    return users


def _key_exchange(text):
    text = text.strip()
    if text not in ("hybrid", "classic"):
        raise ValueError("must be 'hybrid' (post-quantum X25519MLKEM768 preferred) or 'classic'")
    return text


def _yes_no(text):
    text = text.strip().lower()
    if text in ("yes", "true", "on", "1"):
        return True
    if text in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


REGISTRATION_POLICIES = ("open", "invite", "closed")


def _registration(text):
    text = text.strip()
    if text and text not in REGISTRATION_POLICIES:
        raise ValueError("must be open, invite or closed (or left out: open on a relay "
                         "listening on 127.0.0.1 or ::1 only, invite otherwise)")
    return text


def _database(text):
    text = text.strip()
    if not text:
        raise ValueError("must be a SQLite file path or a postgresql:// URL")
    if "://" in text and not text.startswith(("postgresql://", "postgres://")):
        raise ValueError("only postgresql:// URLs or SQLite file paths are supported")
    database_url.check(text)
    return text


@dataclass(frozen=True)
class Option:
    section: str
    key: str
    default: str
    parse: object
    show: object = repr
    """How an error shows the value as written (never a password)."""
    field: str = ""
    """The ServerConfig attribute, when it is not ``key`` (a key two sections share)."""

    @property
    def name(self):
        return self.field or self.key


OPTIONS = (
    Option("server", "interface", "127.0.0.1", _interface),
    Option("server", "port", "6697", _port),
    Option("server", "data_dir", "securechat-data", _path),
    Option("server", "workers", "1", _workers),
    Option("server", "proxy_protocol", "no", _yes_no),
    Option("tls", "certificate", "", _path),
    Option("tls", "private_key", "", _path),
    Option("tls", "key_exchange", "hybrid", _key_exchange),
    Option("store", "database", "securechat.sqlite3", _database,
           show=lambda raw: repr(database_url.redact(raw))),
    Option("accounts", "name_quarantine_days", "30", _days),
    Option("accounts", "registration", "", _registration),
    Option("accounts", "max_devices", "10", _max_devices),
    Option("accounts", "link_window_minutes", "10", _minutes),
    Option("rooms", "history_days", "30", _positive),
    Option("rooms", "history_max_messages", "10000", _positive),
    Option("broadcast", "senders", "admins", _senders),
    Option("broadcast", "admins", "", _user_list),
    Option("limits", "argon2_concurrency", "2", _positive),
    Option("limits", "argon2_waiting_per_client", "32", _positive),
    Option("limits", "login_failures_per_account", "5", _positive),
    Option("limits", "login_delay_max_seconds", "900", _positive),
    Option("limits", "login_failures_per_address", "30", _positive),
    Option("limits", "login_window_seconds", "60", _positive),
    Option("limits", "room_password_failures_per_room", "5", _positive),
    Option("limits", "room_password_room_window_seconds", "900", _positive),
    Option("limits", "room_password_failures_per_user", "20", _positive),
    Option("limits", "room_password_user_window_seconds", "3600", _positive),
    Option("limits", "key_claims_per_minute", "300", _positive),
    Option("limits", "one_time_keys_per_device_per_minute", "20", _positive),
    Option("limits", "one_time_keys_low", "10", _positive),
    Option("limits", "requests_per_second", "2000", _positive),
    Option("limits", "request_burst", "4000", _positive),
    Option("limits", "typing_per_second", "1", _positive),
    Option("limits", "typing_burst", "5", _positive),
    Option("limits", "output_budget_bytes", "4194304", _output_budget),
    Option("limits", "output_stall_seconds", "30", _seconds),
    Option("limits", "handshake_timeout_seconds", "10", _seconds),
    Option("limits", "login_timeout_seconds", "30", _seconds),
    Option("limits", "unauthenticated_per_address", "64", _positive),
    Option("files", "max_size", "100 MiB", _size, field="file_max_size"),
    Option("files", "quota", "500 MiB", _size, field="file_quota"),
    Option("files", "keep_days", "7", _positive, field="file_keep_days"),
    Option("http", "enabled", "yes", _yes_no, field="http_enabled"),
    Option("http", "interface", "127.0.0.1", _interface, field="http_interface"),
    Option("http", "port", "9797", _port, field="http_port"),
    Option("http", "admin_token_file", "admin.token", _path),
    Option("audit", "file", "audit.jsonl", _path, field="audit_file"),
    Option("audit", "max_bytes", "10485760", _positive, field="audit_max_bytes"),
    Option("audit", "keep", "5", _positive, field="audit_keep"),
)

RENAMED = {
    ("limits", "login_attempts_per_account"): (
        "login_failures_per_account", "only failed logins count now"),
    ("limits", "login_attempts_per_address"): (
        "login_failures_per_address", "only failed logins and registrations count now"),
}
"""Keys of earlier releases: (section, old key) -> (new key, what changed).  A config
written for an earlier release stops start-up with the new name, not a bare "unknown key"
(the meaning changed too, so the value is not carried over silently)."""


@dataclass(frozen=True)
class ServerConfig:
    """Validated settings; paths are absolute (relative ones are taken from the data dir)."""

    interface: str
    port: int
    data_dir: str
    workers: int
    proxy_protocol: bool
    certificate: str
    private_key: str
    key_exchange: str
    database: str
    name_quarantine_days: int
    registration: str
    max_devices: int
    link_window_minutes: int
    history_days: int
    history_max_messages: int
    senders: str
    admins: tuple
    argon2_concurrency: int
    argon2_waiting_per_client: int
    login_failures_per_account: int
    login_delay_max_seconds: int
    login_failures_per_address: int
    login_window_seconds: int
    room_password_failures_per_room: int
    room_password_room_window_seconds: int
    room_password_failures_per_user: int
    room_password_user_window_seconds: int
    key_claims_per_minute: int
    one_time_keys_per_device_per_minute: int
    one_time_keys_low: int
    requests_per_second: int
    request_burst: int
    typing_per_second: int
    typing_burst: int
    output_budget_bytes: int
    output_stall_seconds: float
    handshake_timeout_seconds: float
    login_timeout_seconds: float
    unauthenticated_per_address: int
    file_max_size: int
    file_quota: int
    file_keep_days: int
    http_enabled: bool
    http_interface: str
    http_port: int
    admin_token_file: str
    audit_file: str
    audit_max_bytes: int
    audit_keep: int
    source: str

    @property
    def uses_postgres(self):
        return self.database.startswith(("postgresql://", "postgres://"))


def read_ini(path):
    """Parse an ini file; a missing or malformed file is a ConfigError naming it."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e.strerror}")
    except configparser.Error as e:
        raise ConfigError(f"{path}: not a valid ini file: {e}")
    return parser


def load(path=None):
    """Read ``path`` (or the defaults alone when None) into a ServerConfig."""
    source = path or "(defaults)"
    if path is None:
        parser = configparser.ConfigParser(interpolation=None)
    else:
        parser = read_ini(path)
        _refuse_unknown(parser, source)
    values = {}
    for option in OPTIONS:
        raw = parser.get(option.section, option.key, fallback=option.default)
        try:
            values[option.name] = option.parse(raw)
        except ValueError as e:
            raise ConfigError(
                f"{source}: [{option.section}] {option.key} = {option.show(raw)}: {e}"
            ) from None
    return _resolve_paths(values, source)


def _refuse_unknown(parser, source):
    """A misspelt key would silently fall back to its default: say so instead."""
    known = {(o.section, o.key) for o in OPTIONS}
    sections = {o.section for o in OPTIONS}
    for section in parser.sections():
        if section not in sections:
            raise ConfigError(f"{source}: [{section}]: unknown section")
        for key in parser[section]:
            if (section, key) in RENAMED:
                new_key, change = RENAMED[section, key]
                raise ConfigError(f"{source}: [{section}] {key}: renamed to {new_key} "
                                  f"({change}); see docs/configuration.rst")
            if (section, key) not in known:
                raise ConfigError(f"{source}: [{section}] {key}: unknown key")


LOOPBACK_ONLY = ("127.0.0.1", "::1")


def _resolve_paths(values, source):
    if not values["registration"]:  # nobody but this machine can reach a loopback relay
        values["registration"] = "open" if values["interface"] in LOOPBACK_ONLY else "invite"
    data_dir = os.path.abspath(values["data_dir"])
    values["data_dir"] = data_dir
    cert, key = values["certificate"], values["private_key"]
    if bool(cert) != bool(key):
        raise ConfigError(
            f"{source}: [tls] certificate and private_key must be set together (or both left empty)"
        )
    for name in ("certificate", "private_key", "audit_file", "admin_token_file"):
        if values[name]:
            values[name] = os.path.join(data_dir, values[name])
    db = values["database"]
    if "://" not in db:
        values["database"] = os.path.join(data_dir, db)
    _check_workers(values, source)
    return ServerConfig(source=source, **values)


def _check_workers(values, source):
    """Several relay processes need a store they can share, and an operator port each."""
    workers = values["workers"]
    if workers == 1:
        return
    if "://" not in values["database"]:
        raise ConfigError(
            f"{source}: [server] workers = {workers}: the SQLite store has one writer, so it "
            "serves one relay process: set workers = 1, or use PostgreSQL "
            "([store] database = postgresql://...) to run several")
    last = values["http_port"] + workers - 1
    if values["http_enabled"] and values["http_port"] and last > 65535:
        raise ConfigError(
            f"{source}: [server] workers = {workers}: worker i listens for the operator on "
            f"[http] port + i, and {last} is past 65535: lower [http] port")
