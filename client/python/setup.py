"""Builds the package and generates its gRPC stubs from the repository's proto/carpool.proto.

The proto is copied to carpool/_pb/carpool.proto inside a scratch include root so that the
generated modules import each other as `carpool._pb.…`.
"""

import os
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "..", "..", "proto", "carpool.proto")


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        from grpc_tools import protoc  # a build requirement

        if not os.path.isfile(PROTO):
            raise RuntimeError(f"carpool.proto not found at {PROTO}: build from a checkout of the repository")
        with tempfile.TemporaryDirectory() as root:
            pkg = os.path.join(root, "carpool", "_pb")
            os.makedirs(pkg)
            shutil.copy(PROTO, os.path.join(pkg, "carpool.proto"))
            out = os.path.join(self.build_lib, "carpool", "_pb")
            os.makedirs(out, exist_ok=True)
            open(os.path.join(out, "__init__.py"), "w").close()
            args = [
                "grpc_tools.protoc",
                f"-I{root}",
                f"--python_out={self.build_lib}",
                f"--pyi_out={self.build_lib}",
                f"--grpc_python_out={self.build_lib}",
                os.path.join(pkg, "carpool.proto"),
            ]
            if protoc.main(args) != 0:
                raise RuntimeError("protoc failed on carpool.proto")


setup(cmdclass={"build_py": BuildWithStubs})
