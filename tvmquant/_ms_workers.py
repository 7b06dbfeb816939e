"""Functions run in MetaSchedule's builder and runner workers (pickled by value, see tune.py)."""

from __future__ import annotations


def build(mod, target, _params):
    """MetaSchedule's default build without `import tvm.s_tir.tensor_intrin`: that import takes ~50 s in every
    fresh worker, longer than the builder timeout, and no schedule rule we use needs its intrinsics."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def export_so(mod, link_command: list[str]) -> str:
    """A shared library the device loads directly (the default export writes a .tar it would have to link);
    `link_command` is `linker.Linker.command` (the system cross compiler or pip zig)."""
    import os
    import tempfile

    from tvmquant.linker import link_function

    # named after the tune process (this worker's parent), so a later run can remove it if tune is killed
    path = os.path.join(tempfile.mkdtemp(prefix=f"tvmquant-ms-{os.getppid()}-"), "candidate.so")
    mod.export_library(path, fcompile=link_function(link_command))
    return path


def create_session(rpc_config):
    """MetaSchedule's RPC session, but bounded: TVM's tracker request waits forever when no server is left
    under the key (one killed mid-run), and the runner's own timeout does not interrupt it. Closing the
    tracker connection withdraws the request, so no server is later handed to an abandoned caller."""
    import threading

    from tvm import rpc

    tracker = rpc.connect_tracker(rpc_config.tracker_host, rpc_config.tracker_port)
    result = []

    def request():
        try:
            result.append(tracker.request(rpc_config.tracker_key, priority=rpc_config.session_priority,
                                          session_timeout=rpc_config.session_timeout_sec))
        except Exception as exc:  # re-raised below, in the runner's thread
            result.append(exc)

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    thread.join(rpc_config.session_timeout_sec)
    if not result:
        tracker.close()
        raise TimeoutError(f"no free RPC server under key '{rpc_config.tracker_key}' "
                           f"within {rpc_config.session_timeout_sec} s")
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]
