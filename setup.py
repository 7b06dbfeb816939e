"""Ships the top-level `targets/` and `tuning_logs/` folders inside the package (as tvmquant/_shipped/), so a
non-editable install finds them; everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("targets", "tuning_logs")


class BuildWithShippedData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the source folders directly
            return
        root = Path(__file__).resolve().parent
        for folder in SHIPPED:
            dest = Path(self.build_lib) / "tvmquant" / "_shipped" / folder
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(root / folder, dest, ignore=shutil.ignore_patterns(".*", "*.rejected"))


setup(cmdclass={"build_py": BuildWithShippedData})
