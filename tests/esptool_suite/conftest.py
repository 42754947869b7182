"""esptool's vendored suite is not part of this project's own test run: it
runs in its own pytest process (tests/test_esptool_conformance.py), with
esptool's conftest as its root."""

collect_ignore = ["upstream"]
