#!/usr/bin/env bash
# The README's main job on a "fresh machine": a new virtualenv, a plain (non-editable) `pip install .`, no
# Debian cross compiler (TVMQUANT_LINKER=zig refuses to use one even where it is installed), run from an
# empty folder. Fails if the job fails, if the artifact was not linked by the pip zig, if the shipped targets
# were not found, or if `--help` is slow. CI runs this (.ci/run); locally: bash scripts/fresh_machine_check.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d -t tvmquant-fresh-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check "$ROOT"
mkdir "$WORK/job" && cd "$WORK/job"
export TVMQUANT_LINKER=zig XDG_CACHE_HOME="$WORK/cache"

start=$(date +%s.%N)
"$WORK/venv/bin/python" -m tvmquant --help > /dev/null
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
echo "fresh: --help answered in ${elapsed} s"
(( $(echo "$elapsed < 2.0" | bc) )) || { echo "fresh: --help took ${elapsed} s"; exit 1; }

"$WORK/venv/bin/python" -m tvmquant compile --target arm_cpu --bits 2 2>&1 | tee "$WORK/summary.txt" | grep -v "batch/s" || true
grep -q "linked with zig cc -target aarch64-linux-gnu" "$WORK/summary.txt" || { echo "fresh: not linked by pip zig"; exit 1; }
test -s tvmquant_out/digits_cnn-arm_cpu-w2a2-uniform.so || { echo "fresh: no artifact"; exit 1; }
file tvmquant_out/digits_cnn-arm_cpu-w2a2-uniform.so | grep -q "ARM aarch64" || { echo "fresh: artifact is not aarch64"; exit 1; }
"$WORK/venv/bin/python" -m tvmquant compile --target x86 --bits 2 > /dev/null 2>&1 || { echo "fresh: x86 compile failed"; exit 1; }
echo "fresh: the README's main job passed from a plain pip install, linked by the pip zig"
