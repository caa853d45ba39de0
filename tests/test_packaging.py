"""What an install from a clean clone holds: every package of the source tree is listed in
setup.cfg (the tests run the checkout itself, so a package missing there would pass them
and be absent for every user), and the console scripts point at modules that exist."""

import configparser
import importlib
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    return parser


def test_every_package_of_the_source_tree_is_installed():
    """Each directory under securechat/ with an __init__.py is in [options] packages."""
    listed = set(setup_cfg()["options"]["packages"].split())
    found = {os.path.relpath(directory, ROOT).replace(os.sep, ".")
             for directory, _, files in os.walk(os.path.join(ROOT, "securechat"))
             if "__init__.py" in files}
    assert found - listed == set()


def test_console_scripts_name_functions_that_exist():
    """securechat, securechat-bench and securechat-admin each start a function that is
    there."""
    scripts = setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    names = set()
    for line in scripts:
        name, target = (part.strip() for part in line.split("="))
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), line
        names.add(name)
    assert names == {"securechat", "securechat-bench", "securechat-admin"}
