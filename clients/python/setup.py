"""Generates Lethe's gRPC stubs into the build from the repository's proto/ (grpcio-tools).

Only proto/lethe/v1 is generated: google.longrunning and google.rpc are imported from
googleapis-common-protos, whose copies would otherwise clash with second ones at import. The
stubs land as the top-level package `lethe.v1` (the proto package), which is the import path
the generated code itself uses.
"""

import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parents[1] / "proto"


class build_with_stubs(build_py):
    def run(self):
        super().run()
        from grpc_tools import protoc

        out = pathlib.Path(self.build_lib)
        protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "lethe" / "v1").glob("*.proto"))
        if not protos:
            raise SystemExit(f"no .proto files under {PROTO / 'lethe' / 'v1'}: build from the repository")
        include = pathlib.Path(protoc.__file__).parent / "_proto"
        status = protoc.main(
            ["grpc_tools.protoc", f"-I{PROTO}", f"-I{include}",
             f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}", *protos]
        )
        if status != 0:
            raise SystemExit(f"grpc_tools.protoc failed ({status})")


setup(cmdclass={"build_py": build_with_stubs})
