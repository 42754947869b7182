"""Function names for display: C++ demangling and compiler clone suffixes.

Demangling uses the C++ runtime's own demangler (abi::__cxa_demangle via
the `cxxfilt` package, ctypes into libstdc++/libc++), which is the code
c++filt and addr2line -C run; without it names stay mangled, never wrong.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any

_cxxfilt: Any
try:  # optional: a machine without a C++ runtime still decodes, undemangled
    _cxxfilt = importlib.import_module("cxxfilt")
except Exception:  # pragma: no cover - depends on the host
    _cxxfilt = None

# GCC clone suffixes: foo.isra.0, foo.constprop.3, foo.part.1, foo.cold, ...
_CLONE = re.compile(r"(?: \[clone [^\]]*\])+$")
_SUFFIX = re.compile(r"(?:\.(?:isra|constprop|part|cold|lto_priv|localalias|clone)(?:\.\d+)?)+$")


@functools.lru_cache(maxsize=4096)
def demangle(name: str) -> str:
    """`_ZN3foo3barEi` -> `foo::bar(int)`; anything else unchanged."""
    if not name.startswith("_Z") or _cxxfilt is None:
        return name
    try:  # clone suffixes come back as " [clone .isra.0]", as c++filt prints
        return str(_cxxfilt.demangle(name))
    except Exception:  # not a valid mangled name: shown as it is
        return name


def display_name(raw: str) -> str:
    """What the user reads: demangled, without the clone suffix
    (the raw symbol stays in the JSON)."""
    return _CLONE.sub("", demangle(_SUFFIX.sub("", raw)))
