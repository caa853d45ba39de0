"""The service files an operator installs: etc/securechat.service (checked by systemd's
own ``systemd-analyze verify`` where systemd is installed), the Dockerfile (built where a
Docker daemon runs), compose.yaml and the ini files they use (valid relay configs)."""

import configparser
import os
import shutil
import subprocess

import pytest

from securechat import config as server_config
from tests.processes import executable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "etc", "securechat.service")
INSTALLED_TWISTD = "/opt/securechat/venv/bin/twistd"


def unit():
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(UNIT)
    return parser


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_the_unit_runs_the_relay_confined_as_its_own_user():
    """The unit starts twistd's securechat plugin in the foreground as the securechat
    user, reloads by SIGHUP, restarts on failure and confines the process (no new
    privileges, a read-only system but for its data directory)."""
    service = unit()["Service"]
    assert service["ExecStart"].startswith(f"{INSTALLED_TWISTD} --nodaemon ")
    assert " securechat --config " in service["ExecStart"]
    assert service["User"] == "securechat" and service["Group"] == "securechat"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/securechat"
    assert service["CapabilityBoundingSet"] == ""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here (no systemd): the unit's "
                           "directives are still checked by the test above")
def test_systemd_analyze_verify_finds_nothing_wrong(tmp_path):
    """``systemd-analyze verify`` of the unit, its ExecStart pointed at this install's
    twistd (the unit names where the docs install it, absent on a test machine), prints
    nothing and exits 0."""
    checked = tmp_path / "securechat.service"
    checked.write_text(read("etc", "securechat.service").replace(
        INSTALLED_TWISTD, executable("twistd")))
    result = subprocess.run(["systemd-analyze", "verify", str(checked)], capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result


def test_the_container_runs_unprivileged_with_a_volume_and_a_health_check():
    """The image's relay runs as the securechat user, keeps its data in a volume, checks
    its health through /health and is stopped by SIGTERM (the graceful stop)."""
    dockerfile = read("Dockerfile")
    assert "\nUSER securechat\n" in dockerfile
    assert 'VOLUME ["/var/lib/securechat"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "http://127.0.0.1:9797/health" in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile
    assert "etc/container.ini" in dockerfile


@pytest.mark.parametrize("name", ["container.ini", "compose.ini"])
def test_the_container_configs_are_valid_and_keep_data_in_the_volume(name):
    """etc/container.ini and etc/compose.ini load as relay configs; the relay listens on
    every address of the container on 6697 and keeps its data inside the volume, and the
    operator port stays inside the container."""
    loaded = server_config.load(os.path.join(ROOT, "etc", name))
    assert (loaded.interface, loaded.port) == ("0.0.0.0", 6697)
    assert loaded.data_dir.startswith("/var/lib/securechat/")
    assert (loaded.http_interface, loaded.http_port) == ("127.0.0.1", 9797)


def test_compose_gives_the_relay_the_database_it_configures():
    """compose.yaml runs PostgreSQL with the user, password and database the relay's
    compose.ini names, and mounts that ini where the image reads its config."""
    compose = read("compose.yaml")
    database = server_config.load(os.path.join(ROOT, "etc", "compose.ini")).database
    assert database == "postgresql://securechat:change-me@postgres:5432/securechat"
    for line in ("POSTGRES_USER: securechat", "POSTGRES_PASSWORD: change-me",
                 "POSTGRES_DB: securechat", "./etc/compose.ini:/etc/securechat/securechat.ini"):
        assert line in compose


def _docker_runs():
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _docker_runs(),
                    reason="no Docker daemon here: the image is built where one runs "
                           "(docs/operations.rst, 'Service files')")
def test_the_image_builds():
    """``docker build`` of the repository succeeds."""
    result = subprocess.run(["docker", "build", "-q", "-t", "securechat-test", ROOT],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
