"""Tiny pure-Python wheels written on the spot, served as a local wheelhouse.

For the tests and benchmarks of declared environments; nothing in the daemons imports it.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

__all__ = ["make_wheel"]


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    wheelhouse: Path, name: str, version: str, module: str, *, requires: tuple[str, ...] = (), pad_bytes: int = 0
) -> Path:
    """Write a pure-Python wheel of package ``name`` whose ``__init__.py`` is ``module``; return its path.

    ``pad_bytes`` adds a data file of that size (to make an environment larger).
    """
    wheelhouse.mkdir(parents=True, exist_ok=True)
    wheelhouse.chmod(0o755)  # builds run as a job's uid on a root worker: the wheelhouse is readable by all
    dist = f"{name.replace('-', '_')}-{version}"
    files: dict[str, bytes] = {f"{name.replace('-', '_')}/__init__.py": module.encode()}
    if pad_bytes:
        files[f"{name.replace('-', '_')}/pad.bin"] = bytes(pad_bytes)
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {req}" for req in requires]
    files[f"{dist}.dist-info/METADATA"] = ("\n".join(meta) + "\n").encode()
    files[f"{dist}.dist-info/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: flopex-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist}.dist-info/RECORD,,\n"
    files[f"{dist}.dist-info/RECORD"] = record.encode()
    path = wheelhouse / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    path.chmod(0o644)
    return path
