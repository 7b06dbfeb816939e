"""scripts/bench.py --quick: runs end to end, writes its report, and checked every timed variant's output
(ours against the quantized PyTorch reference of the same scheme). Optional peers (onnxruntime) may be absent."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--trials", "0", "--only", "conv7", "digits",
           "--rounds", "2", "--min-time", "0.005", "--no-progress", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "BENCHMARKS.md").read_text().startswith("# Benchmarks")
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert set(data["cases"]) == {"conv7", "digits"}
    for case in data["cases"].values():
        rows = case["variants"]
        assert rows["torch_fp32"]["status"] == "ok"
        assert rows["tvm_fp32"]["family"] == "fp32 untuned"
        ours = {k: r for k, r in rows.items() if r["group"] == "ours"}
        assert ours and all(r["status"] == "ok" for r in ours.values())
        for row in ours.values():
            assert row["check"].startswith("vs quantized reference")
            assert len(row["times_ms"]) == 2
        for row in rows.values():
            assert row["status"] == "ok" or row["status"].startswith("n/a"), row
            if row["status"] == "ok" and row["group"] == "peer" and row["label"] != "PyTorch fp32":
                assert row["check"].startswith("vs torch fp32")
    assert rows["ours_uniform_w2a2"]["family"].startswith("bitserial")
    digits = data["cases"]["digits"]["variants"]["ours_uniform_w2a2"]["work"]
    assert digits["popcount_words"] > 0 and digits["uncounted"] == []
    assert "Whole models vs the sum of their kernels' ceilings" in (tmp_path / "BENCHMARKS.md").read_text()
