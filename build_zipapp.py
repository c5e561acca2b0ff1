#!/usr/bin/env python3
"""Build postroj.pyz from postroj.py: one executable file, the same bytes for the same source.

Entries are written in a fixed order with a fixed date and explicit modes, so neither file times
nor the Python version that builds it change the result. The archive is written to a temporary
file, made executable, then renamed into place.

usage: build_zipapp.py [OUTPUT]   (default: postroj.pyz beside this file)
"""

from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from pathlib import Path

SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = b"import postroj\nraise SystemExit(postroj.main())\n"
FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, so that the mode below is honoured everywhere
    info.external_attr = (0o100644 & 0xFFFF) << 16
    return info


def build(source: Path, output: Path) -> Path:
    """Write the zipapp for `source` to `output` atomically and return its path."""
    files = {"__main__.py": MAIN, "postroj.py": source.read_bytes()}
    fd, tmp = tempfile.mkstemp(prefix=".%s." % output.name, dir=str(output.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(SHEBANG)
            with zipfile.ZipFile(handle, "w") as archive:
                for name in sorted(files):
                    archive.writestr(entry(name), files[name], compresslevel=9)
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    return output


def main() -> int:
    here = Path(__file__).resolve().parent
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "postroj.pyz"
    build(here / "postroj.py", output.absolute())
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
