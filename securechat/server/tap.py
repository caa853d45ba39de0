"""``twistd securechat``: command-line options and the service they make."""

from twisted.python import usage

from securechat import config as config_module


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Run the securechat relay: TLS on 127.0.0.1:6697, data in ./securechat-data, "
        "an embedded SQLite store, unless the ini file given with --config says otherwise "
        "(see etc/securechat.ini for every option)."
    )
    optParameters = [
        ["config", "c", None, "ini file with the server settings"],
        ["worker", None, None, "run as worker N of a supervisor ([server] workers): set by "
                               "the supervisor itself, not for operators", int],
    ]

    def postOptions(self):
        """Load the settings; a bad one ends twistd with that one line and status 1.

        (A UsageError would print twistd's whole usage text in front of it, which
        says nothing about the file at fault.)
        """
        try:
            self["settings"] = config_module.load(self["config"])
        except config_module.ConfigError as e:
            raise SystemExit(f"securechat relay: bad configuration: {e}") from None


def makeService(options):
    """One relay; or, with ``[server] workers`` > 1, their supervisor, which runs each
    worker as this plugin again with ``--worker``."""
    from twisted.internet import reactor

    settings = options["settings"]
    # options.parent: twistd's own options (daemon mode keeps its status pipe there).
    if options["worker"] is not None:
        from securechat.server.worker import make_worker_service

        return make_worker_service(settings, options["worker"], reactor, options.parent)
    if settings.workers > 1:
        from securechat.server.supervisor import make_supervisor_service

        return make_supervisor_service(settings, options["config"], reactor, options.parent)
    from securechat.server.service import make_service

    return make_service(settings, reactor, options.parent)
