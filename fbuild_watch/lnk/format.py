"""The `.lnk` file format, v1 (compatible with the seeds' tool):

    {"v": 1, "url": "https://...", "sha256": "<64 hex>", "size": N,
     "extract": "file" | "zip" | "tar.gz"}

`sha256` is mandatory; `size` is optional but enforced when present;
`extract` defaults to "file". Unknown keys are errors: a typo such as
"sha265" must not silently turn verification off.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fbuild_watch.errors import ConfigError
from fbuild_watch.watch.state import LNK_SUFFIX

__all__ = [
    "EXTRACT_KINDS",
    "LNK_SUFFIX",
    "MAX_LNK_BYTES",
    "Pointer",
    "dump_pointer",
    "parse_pointer",
]

EXTRACT_KINDS = ("file", "zip", "tar.gz")
MAX_LNK_BYTES = 64 * 1024  # a pointer is tiny; anything bigger is not one
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = {"v", "url", "sha256", "size", "extract"}


@dataclass(frozen=True)
class Pointer:
    """One parsed `.lnk` file. `path` is where it was read from."""

    path: Path
    url: str
    sha256: str
    size: int | None = None
    extract: str = "file"

    @property
    def target_name(self) -> str:
        """`foo.bin.lnk` -> `foo.bin`."""
        return self.path.name[: -len(LNK_SUFFIX)]


def parse_pointer(path: Path, text: bytes | None = None) -> Pointer:
    """Read and validate one `.lnk` file; errors name the file."""
    path = Path(path)
    if not path.name.endswith(LNK_SUFFIX) or path.name == LNK_SUFFIX:
        raise ConfigError(f"a resource pointer must be named NAME{LNK_SUFFIX}", source=path)
    if text is None:
        try:
            with path.open("rb") as f:
                text = f.read(MAX_LNK_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror or exc}", source=path) from None
    if len(text) > MAX_LNK_BYTES:
        raise ConfigError(f"too large for a .lnk pointer (> {MAX_LNK_BYTES} bytes)", source=path)
    try:
        doc: Any = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", source=path) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"malformed JSON: {exc.msg} at line {exc.lineno}", source=path) from None
    if not isinstance(doc, dict):
        raise ConfigError("must be a JSON object", source=path)
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}", source=path)
    version = doc.get("v")
    if version is None:
        raise ConfigError('missing "v" (format version; 1 is supported)', source=path)
    if version != 1 or isinstance(version, bool):
        raise ConfigError(f"unsupported version {version!r} (1 is supported)", source=path)
    url = doc.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ConfigError('missing "url"', source=path)
    if "://" not in url:
        raise ConfigError(f"url {url!r} has no scheme (https://, http://, file://)", source=path)
    digest = doc.get("sha256")
    if digest is None:
        raise ConfigError('missing "sha256" (it is mandatory)', source=path)
    if not isinstance(digest, str):
        raise ConfigError('"sha256" must be a string of 64 hex digits', source=path)
    digest = digest.lower()
    if not _HEX64.fullmatch(digest):
        raise ConfigError(
            f'"sha256" must be 64 hex digits, got {len(digest)} characters', source=path
        )
    size = doc.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ConfigError('"size" must be a non-negative integer', source=path)
    extract = doc.get("extract", "file")
    if extract not in EXTRACT_KINDS:
        raise ConfigError(
            f'"extract" must be one of {", ".join(EXTRACT_KINDS)}, got {extract!r}', source=path
        )
    return Pointer(path, url.strip(), digest, size, extract)


def dump_pointer(url: str, sha256: str, size: int | None, extract: str = "file") -> bytes:
    doc: dict[str, object] = {"v": 1, "url": url, "sha256": sha256}
    if size is not None:
        doc["size"] = size
    doc["extract"] = extract
    return (json.dumps(doc, indent=2) + "\n").encode()
