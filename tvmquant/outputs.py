"""Where `compile` writes, and how: never over one of its inputs, only into a folder it can write, and every
file atomically, so that a failed run leaves the previous artifact (and its sidecars) as they were.

An artifact `OUT.so` has two sidecars, `OUT.so.json` (metadata) and `OUT.so.npz` (check data): their own
suffixes are appended, so no choice of `-o` makes one file the sidecar of another.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def sidecar_paths(artifact: Path) -> tuple[Path, Path]:
    """`model.so` -> (`model.so.json` metadata, `model.so.npz` evaluation inputs and reference outputs)."""
    return artifact.with_name(artifact.name + ".json"), artifact.with_name(artifact.name + ".npz")


ARTIFACT_SUFFIX = ".so"


def default_output(model: str, target: str, wbits: int, abits: int, method: str, kernel: str = "auto") -> Path:
    """tvmquant_out/MODEL-TARGET-wWaA-METHOD[-KERNEL].so: runs that differ in what decides the program do not
    overwrite each other."""
    suffix = "" if kernel == "auto" else f"-{kernel}"
    return Path("tvmquant_out") / f"{model}-{target}-w{wbits}a{abits}-{method}{suffix}{ARTIFACT_SUFFIX}"


def check_output(output: Path, inputs: Iterable[str | Path | None]) -> None:
    """Before any work: refuse an artifact path without the `.so` suffix (TVM's loader picks the format by it,
    so a module written as `out` could never be loaded), an output (artifact or sidecar) that is, or lies in,
    one of `inputs`, and an output folder that cannot be written."""
    targets = (output, *sidecar_paths(output))
    for given in filter(None, inputs):
        source = Path(given)
        for path in targets:
            if _same(path, source) or (source.is_dir() and _inside(path, source)):
                what = "the artifact" if path == output else f"the sidecar {path.name}"
                raise UserError(f"-o {output}: {what} would overwrite the input {source}; choose another output path")
    for path in targets:
        if path.is_dir():
            raise UserError(f"-o {output}: {path} is a folder")
    if output.suffix != ARTIFACT_SUFFIX:
        raise UserError(f"-o {output}: the artifact is a shared library and must end in {ARTIFACT_SUFFIX} "
                        f"(e.g. -o {output.with_name(output.name + ARTIFACT_SUFFIX)})")
    _check_writable(output.parent)


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)  # also catches hard links
    return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_writable(folder: Path) -> None:
    """Probe the folder (or, if it does not exist yet, the nearest one that does) with a real temporary file:
    permission bits say nothing for root or on a read-only mount."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write into {folder}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tvmquant-probe-", dir=existing)
    except OSError as exc:
        raise UserError(f"cannot write into {folder}: {exc.strerror}") from None
    os.close(fd)
    _remove(Path(probe))


@contextmanager
def replace_together(*finals: Path) -> Iterator[list[Path]]:
    """Temporary paths beside `finals`, renamed over them only when the block succeeds (the first, the
    artifact, last); on failure they are removed and the block's own error propagates, never a clean-up error."""
    for path in finals:
        path.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    try:
        for path in finals:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for temp, path in reversed(list(zip(temps, finals))):
            os.replace(temp, path)
    except OSError as exc:
        _remove_all(temps)
        raise UserError(f"cannot write {finals[0]}: {exc.strerror or exc}") from exc
    except BaseException:
        _remove_all(temps)
        raise


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        _remove(path)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # reported, but never in place of the error that made us clean up
        warnings.warn(f"could not remove the temporary file {path}: {exc.strerror}", stacklevel=3)
