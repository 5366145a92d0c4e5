"""The weight files of a networks file's published networks, from the wheels of the packages that ship them:
`python -m hparr.survey.fetch NETWORKS DEST` downloads each pinned package (`pip download --no-deps`, into
DEST/wheels, once) and extracts only the member files that the networks file names, to DEST/<file>."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import files
from ..errors import HparrError
from ._collect import read_networks_file

WHEELS = "wheels"


def wheel_name(package: str) -> str:
    """The distribution name as a wheel's file name spells it (PEP 427: runs of -_. become _)."""
    return "".join("_" if c in "-." else c for c in package).lower()


def find_wheel(folder: Path, package: str, version: str) -> Path | None:
    """The wheel of `package` `version` in `folder`, if there."""
    prefix = f"{wheel_name(package)}-{version}-"
    return next((p for p in sorted(folder.glob("*.whl")) if p.name.lower().startswith(prefix)), None)


def download(package: str, version: str, folder: Path) -> Path:
    """`pip download --no-deps --only-binary=:all: PACKAGE==VERSION -d folder`, unless the wheel is there."""
    found = find_wheel(folder, package, version)
    if found is not None:
        return found
    files.ensure_dir(folder)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           f"{package}=={version}", "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = find_wheel(folder, package, version)
    if done.returncode != 0 or found is None:
        tail = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise HparrError(f"cannot download {package}=={version}: {tail}")
    return found


def extract(wheel: Path, member: str, dest: Path) -> Path:
    """Copy one member of a wheel (a zip file) to `dest`, atomically."""
    with zipfile.ZipFile(wheel) as z:
        try:
            data = z.read(member)
        except KeyError:
            raise HparrError(f"{wheel.name} has no file {member}") from None
    files.write_bytes(dest, data)
    return dest


def fetch(entries: Sequence[Mapping[str, Any]], dest: str | os.PathLike) -> list[Path]:
    """Every entry's `file` below `dest`, extracted from the wheel of its `package` and `version` (entries whose
    file is there already are left as they are)."""
    dest = Path(dest)
    written = []
    for entry in entries:
        target = dest / entry["file"]
        if not target.is_file():
            wheel = download(entry["package"], entry["version"], dest / WHEELS)
            extract(wheel, entry["member"], target)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m hparr.survey.fetch NETWORKS_FILE DEST", file=sys.stderr)
        return 2
    try:
        for path in fetch(read_networks_file(args[0]), args[1]):
            print(path)
    except HparrError as exc:
        print(f"hparr survey fetch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
