"""Every bad input we know of (data, labels, files of the wrong kind, outputs that would clobber an input)
ends in one line on stderr, exit code 2, and no file written or changed anywhere under the test folder."""

import hashlib
import os

import numpy as np
import pytest
import torch

from tvmquant.cli import main
from tvmquant.database import RECORDS, WORKLOADS

SHAPE = (1, 1, 6, 6)
CLASSES = 4


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.fc = torch.nn.Linear(2 * 4 * 4, CLASSES)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    model = d / "net.pt2"
    torch.export.save(torch.export.export(_Net().eval(), (torch.zeros(SHAPE),)), model)
    rng = np.random.default_rng(0)
    good = rng.standard_normal((8, 1, 6, 6)).astype(np.float32)
    arrays = {
        "calib": good, "nan": np.where(good > 1, np.nan, good), "inf": np.where(good > 1, np.inf, good),
        "huge": good.astype(np.float64) * 1e39, "empty": good[:0], "complex": good.astype(np.complex64),
        "strings": np.array([["abc"]] * 8), "scalar": np.float32(1.0), "shape": good[:, :, :4],
        "labels": np.arange(8) % CLASSES, "labels_short": np.arange(5) % CLASSES,
        "labels_range": np.full(8, CLASSES), "labels_negative": np.full(8, -1),
        "labels_float": np.zeros(8, np.float32), "labels_2d": np.zeros((8, 1), np.int64),
    }
    paths = {name: d / f"{name}.npy" for name in arrays}
    for name, array in arrays.items():
        np.save(paths[name], array)
    np.save(d / "object.npy", np.array([{"a": 1}] * 8, dtype=object), allow_pickle=True)
    paths["object"] = d / "object.npy"
    raw = paths["calib"].read_bytes()
    paths["truncated"] = d / "truncated.npy"
    paths["truncated"].write_bytes(raw[: len(raw) // 2])
    paths["random"] = d / "random.npy"
    paths["random"].write_bytes(os.urandom(300))
    paths["npz"] = d / "calib_archive.npy"
    np.savez(d / "calib_archive.npz", x=good)
    os.replace(d / "calib_archive.npz", paths["npz"])
    for name, x, y in [("train", good, arrays["labels"]), ("train_nan", arrays["nan"], arrays["labels"]),
                       ("train_range", good, arrays["labels_range"]), ("train_short", good, arrays["labels_short"])]:
        np.savez(d / f"{name}.npz", x=x, y=y)
        paths[name] = d / f"{name}.npz"
    np.savez(d / "train_no_y.npz", x=good)
    paths["train_no_y"] = d / "train_no_y.npz"
    paths["train_random"] = d / "train_random.npz"
    paths["train_random"].write_bytes(os.urandom(300))
    logs = d / "logs"
    logs.mkdir()
    (logs / WORKLOADS).write_text("")
    (logs / RECORDS).write_text("")
    paths["logs"] = logs
    os.link(paths["calib"], d / "calib_link.so")
    paths["calib_link"] = d / "calib_link.so"
    paths["a_file"] = d / "a_file"
    paths["a_file"].write_text("x")
    paths["model"] = model
    return {k: str(v) for k, v in paths.items()}


def _cases(f):
    base = ["compile", "--model", f["model"], "--calib", f["calib"]]
    train = [*base, "--train", "--epochs", "1"]
    labels = [*base, "--eval-data", f["calib"], "--eval-labels"]
    return {
        # data
        "calib NaN": ([*base[:4], f["nan"]], "non-finite"),
        "calib Inf": ([*base[:4], f["inf"]], "non-finite"),
        "calib beyond float32": ([*base[:4], f["huge"]], "non-finite"),
        "calib empty": ([*base[:4], f["empty"]], "is empty"),
        "calib complex": ([*base[:4], f["complex"]], "dtype complex64"),
        "calib strings": ([*base[:4], f["strings"]], "does not fit the model input"),
        "calib scalar": ([*base[:4], f["scalar"]], "does not fit the model input"),
        "calib shape": ([*base[:4], f["shape"]], "does not fit the model input"),
        "calib object (pickled)": ([*base[:4], f["object"]], "never unpickled"),
        "calib is .npz": ([*base[:4], f["npz"]], "a .npz archive"),
        "calib truncated": ([*base[:4], f["truncated"]], "not a readable .npy"),
        "calib random bytes": ([*base[:4], f["random"]], "not a readable .npy"),
        "eval NaN": ([*base, "--eval-data", f["nan"]], "evaluation data has"),
        "eval empty": ([*base, "--eval-data", f["empty"]], "evaluation data is empty"),
        "labels short": ([*labels, f["labels_short"]], "expected 8 labels"),
        "labels out of range": ([*labels, f["labels_range"]], "0..3"),
        "labels negative": ([*labels, f["labels_negative"]], "0..3"),
        "labels float": ([*labels, f["labels_float"]], "must be integers"),
        "labels 2-D": ([*labels, f["labels_2d"]], "expected 8 labels"),
        "train x NaN": ([*train, "--train-data", f["train_nan"]], "non-finite"),
        "train y out of range": ([*train, "--train-data", f["train_range"]], "0..3"),
        "train y short": ([*train, "--train-data", f["train_short"]], "expected 8 labels"),
        "train no y": ([*train, "--train-data", f["train_no_y"]], "arrays 'x' and 'y'"),
        "train random bytes": ([*train, "--train-data", f["train_random"]], "arrays 'x' and 'y'"),
        # outputs that would clobber an input, or cannot be written
        "-o is the model": ([*base, "-o", f["model"]], "would overwrite the input"),
        "-o is the calib": ([*base, "-o", f["calib"]], "would overwrite the input"),
        "-o is the eval data": ([*base, "--eval-data", f["nan"], "-o", f["nan"]], "would overwrite the input"),
        "-o is the labels": ([*labels, f["labels"], "-o", f["labels"]], "would overwrite the input"),
        "-o sidecar is the train data": ([*train, "--train-data", f["train"], "-o", f["train"][:-4]], "sidecar"),
        "-o hard link of calib": ([*base, "-o", f["calib_link"]], "would overwrite the input"),
        "-o inside the tuning log": ([*base, "--tuning-log", f["logs"], "-o", f["logs"] + "/" + WORKLOADS], "would overwrite"),
        "-o is a folder": ([*base, "-o", f["logs"]], "is a folder"),
        "-o under a file": ([*base, "-o", f["a_file"] + "/x.so"], "is not a folder"),
        "-o unwritable folder": ([*base, "-o", "/proc/tvmquant-test.so"], "cannot write into /proc"),
        "-o without .so": ([*base, "-o", os.path.join(os.path.dirname(f["model"]), "out")], "must end in .so"),
        # tune reads the same inputs
        "tune calib NaN": (["tune", "--model", f["model"], "--calib", f["nan"], "--log-dir", f["logs"]], "non-finite"),
        "tune log dir is a file": (["tune", "--model", f["model"], "--calib", f["calib"], "--log-dir", f["a_file"]], "a_file"),
    }


def _snapshot(root):
    state = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                state[path] = (hashlib.sha256(handle.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return state


NAMES = [
    "calib NaN", "calib Inf", "calib beyond float32", "calib empty", "calib complex", "calib strings", "calib scalar",
    "calib shape", "calib object (pickled)", "calib is .npz", "calib truncated", "calib random bytes", "eval NaN",
    "eval empty", "labels short", "labels out of range", "labels negative", "labels float", "labels 2-D",
    "train x NaN", "train y out of range", "train y short", "train no y", "train random bytes", "-o is the model",
    "-o is the calib", "-o is the eval data", "-o is the labels", "-o sidecar is the train data",
    "-o hard link of calib", "-o inside the tuning log", "-o is a folder", "-o under a file", "-o unwritable folder",
    "tune calib NaN", "tune log dir is a file",
]


@pytest.mark.parametrize("case", NAMES)
def test_bad_input_is_one_line_exit_2_nothing_written(files, case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output would land here
    argv, message = _cases(files)[case]
    root = os.path.dirname(files["model"])
    before = _snapshot(root)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("tvmquant: error:"), err
    assert message in lines[0], lines[0]
    assert _snapshot(root) == before
    assert not os.listdir(tmp_path)


def test_every_case_is_listed(files):
    assert sorted(_cases(files)) == sorted(NAMES)


def test_device_failures_become_one_user_error():
    """A TVM error (RuntimeError subclasses in TVM 0.27) or a broken connection inside a device run is one
    readable UserError; before, the handler named tvm.error.TVMError, which 0.27 lacks, and crashed."""
    import tvm

    from tvmquant.errors import UserError
    from tvmquant.rpc import device_errors

    for exc in (tvm.error.InternalError("kernel\nFailed to get file format from out"), ConnectionResetError("peer")):
        with pytest.raises(UserError, match="running here failed: (Failed to get file format from out|peer)"):
            with device_errors("running here"):
                raise exc
