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
    optParameters = [["config", "c", None, "ini file with the server settings"]]

    def postOptions(self):
        try:
            self["settings"] = config_module.load(self["config"])
        except config_module.ConfigError as e:
            raise usage.UsageError(f"bad configuration: {e}")


def makeService(options):
    from twisted.internet import reactor

    from securechat.server.service import make_service

    return make_service(options["settings"], reactor)
