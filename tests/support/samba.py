"""A private Samba for interop tests and benchmarks: see remotevss.samba.private.

Kept as the tests' import path; the code lives in the package because the
README demo (``remotevss demo``) runs the same private Samba.
"""

from __future__ import annotations

from remotevss.samba.private import (
    HELPERS,
    PASSWORD,
    RPCD_DIR,
    PrivateSamba,
    free_port,
)

__all__ = ["HELPERS", "PASSWORD", "RPCD_DIR", "PrivateSamba", "free_port"]
