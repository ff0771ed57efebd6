"""Regenerate the Python stubs from proto/strata.proto (master <-> region) and
proto/tasks.proto (the client API).

Run from anywhere: ``python -m strata.proto.generate``. The stubs are committed; a test
regenerates them into a temporary folder and fails when they differ.

protoc names a file's imports after its path under the include root, so the proto is
compiled as ``strata/proto/strata.proto``: the stubs then import ``strata.proto``, the
name this folder has once installed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROTOS = ("strata.proto", "tasks.proto")
PACKAGE_PATH = Path("strata") / "proto"
STUBS = tuple(f"{Path(proto).stem}{suffix}" for proto in PROTOS
              for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))


def generate(out_dir: Path) -> None:
    """Write the stubs of every proto into ``out_dir``."""
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        source_root, build = Path(tmp) / "src", Path(tmp) / "out"
        (source_root / PACKAGE_PATH).mkdir(parents=True)
        build.mkdir()
        for proto in PROTOS:
            shutil.copyfile(HERE / proto, source_root / PACKAGE_PATH / proto)
        args = [
            "protoc",
            f"-I{source_root}",
            f"-I{include}",
            f"--python_out={build}",
            f"--pyi_out={build}",
            f"--grpc_python_out={build}",
            *(str(source_root / PACKAGE_PATH / proto) for proto in PROTOS),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in STUBS:
            shutil.copyfile(build / PACKAGE_PATH / name, out_dir / name)


def main() -> None:
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)


if __name__ == "__main__":
    main()
