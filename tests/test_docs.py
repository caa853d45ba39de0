"""The docs render: README.rst and every page of docs/ parse as reStructuredText without a
warning (a broken table or literal shows as garbage, or not at all, to the reader)."""

import glob
import os

import docutils.core
import docutils.utils
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.rst"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.rst")))]


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_the_page_renders_without_a_warning(page):
    """docutils reads ``page`` with warnings made errors: nothing is malformed."""
    with open(page, encoding="utf-8") as f:
        text = f.read()
    try:
        docutils.core.publish_string(text, writer="null", settings_overrides={
            "report_level": 2, "halt_level": 2, "warning_stream": False})
    except docutils.utils.SystemMessage as e:
        pytest.fail(f"{os.path.relpath(page, ROOT)}: {e}")
