"""Build script: setup.cfg holds the metadata; this adds the client's protobuf compile step."""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = Path("unet_keras", "client", "protos")
DESCRIPTORS = Path("unet_keras", "client", "tf_serving.binpb")


def compile_protos(output: Path) -> None:
    """Compiles the client's .proto files into one FileDescriptorSet at `output`."""
    # Imported here: only builds need grpcio-tools (pyproject.toml's build requirements).
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        raise RuntimeError(
            "building unet-keras needs grpcio-tools>=1.68.1 to compile unet_keras/client/protos; "
            "pip installs it by itself unless run with --no-build-isolation: then install it"
        ) from None

    sources = sorted(str(p.relative_to(ROOT / PROTOS)) for p in (ROOT / PROTOS).rglob("*.proto"))
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={ROOT / PROTOS}",
            # google/protobuf/{any,wrappers}.proto ship inside grpc_tools.
            f"--proto_path={Path(grpc_tools.__file__).parent / '_proto'}",
            f"--descriptor_set_out={partial}",
            "--include_imports",
            *sources,
        ]
    )
    if status != 0:
        raise RuntimeError(f"grpc_tools.protoc failed (exit {status}) on {ROOT / PROTOS}")
    os.replace(partial, output)


class BuildPyWithProtos(build_py):
    """build_py that also writes the client's descriptor set.

    A wheel gets it in the build directory. An editable install (PEP 660, which runs this
    command with `editable_mode` set and copies nothing) gets it in the source tree, where
    the editable finder looks.
    """

    def run(self) -> None:
        """Compiles the descriptors, then does the usual build_py work."""
        if getattr(self, "editable_mode", False):
            compile_protos(ROOT / DESCRIPTORS)
        else:
            compile_protos(Path(self.build_lib) / DESCRIPTORS)
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
