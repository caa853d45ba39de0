"""The layering rules of DESIGN.md, checked: the server never touches client cryptography."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER_SIDE = ["securechat/server", "securechat/store"]
FORBIDDEN = ("securechat.crypto", "securechat.client", "vodozemac")


def imported_names(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_server_sources_do_not_import_client_crypto():
    """No module of the server or the store imports securechat.crypto, the client or vodozemac."""
    offenders = []
    for package in SERVER_SIDE:
        for path in (ROOT / package).rglob("*.py"):
            for name in imported_names(path):
                if name.startswith(FORBIDDEN):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_running_server_modules_load_no_client_crypto():
    """Importing the whole server (as twistd does) loads neither vodozemac nor securechat.crypto."""
    code = (
        "import sys, securechat.server.tap, securechat.server.service, twisted.plugins.securechat_plugin\n"
        "bad = [m for m in sys.modules if m.startswith(%r)]\n"
        "print(bad); sys.exit(1 if bad else 0)" % (FORBIDDEN,)
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    """.ci/run runs exactly the test command README.rst gives."""
    readme = (ROOT / "README.rst").read_text()
    section = readme.split("Run the tests")[1]
    command = next(line.strip() for line in section.splitlines() if line.startswith("    "))
    assert command in (ROOT / ".ci" / "run").read_text()
