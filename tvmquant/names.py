"""The names the command line offers, importable without torch or TVM so that `--help` and a bad flag answer
at once. The registries they name (methods/registry.py, kernels/registry.py) are checked against
these lists by tests/test_cli.py."""

METHODS = ("uniform", "uniq", "inq", "balanced", "multipoint", "qnet")
QAT_METHODS = ("uniform", "uniq", "inq", "balanced", "qnet")
KERNELS = ("auto", "bitserial", "int8", "shift", "lut", "onehot", "multipoint", "depthwise", "dequant")
