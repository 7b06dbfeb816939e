"""Build and export functions for MetaSchedule's builder workers (pickled by value, see tune.py)."""

from __future__ import annotations


def build(mod, target, _params):
    """MetaSchedule's default build without `import tvm.s_tir.tensor_intrin`: that import takes ~50 s in every
    fresh worker, longer than the builder timeout, and no schedule rule we use needs its intrinsics."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def export_so(mod, cross_compiler: str) -> str:
    """A shared library the device loads directly (the default export writes a .tar it would have to link)."""
    import os
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="tvmquant-ms-"), "candidate.so")
    mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler))
    return path
