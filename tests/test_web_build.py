"""The download page (megafs/web/megafs.html) is what web/ builds: the checked-in asset is
rebuilt from the sources and the pinned package-lock.json and compared byte for byte, and
its Content-Security-Policy allows no request but to its own origin."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from megafs.web import page

ROOT = Path(__file__).resolve().parent.parent
ASSET = ROOT / "megafs" / "web" / "megafs.html"


def test_page_rebuilds_byte_for_byte(tmp_path):
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.fail("node and npm are needed to rebuild the page (./dev.sh test installs them)")
    work = tmp_path / "web"
    shutil.copytree(ROOT / "web", work, ignore=shutil.ignore_patterns("node_modules"))
    subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=work,
                   check=True, timeout=300, capture_output=True)
    subprocess.run([node, "build.mjs", str(tmp_path / "megafs.html")], cwd=work, check=True,
                   timeout=60)
    assert (tmp_path / "megafs.html").read_bytes() == ASSET.read_bytes(), \
        "megafs/web/megafs.html is stale: run 'npm ci && node build.mjs' in web/"


def test_page_is_package_data_with_a_strict_csp():
    html = page().decode()
    assert page() == ASSET.read_bytes()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    rules = dict(rule.strip().split(" ", 1) for rule in csp.split(";"))
    assert rules["default-src"] == "'none'" and rules["connect-src"] == "'self'"
    assert rules["base-uri"] == "'none'" and rules["form-action"] == "'none'"
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert len(scripts) == 1 and len(styles) == 1 and "<script src" not in html

    def digest(text):
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert rules["script-src"] == digest(scripts[0])
    assert rules["style-src"] == digest(styles[0])
    assert "MIT License" in scripts[0] and "Arjun Barrett" in scripts[0]  # fzstd's licence
