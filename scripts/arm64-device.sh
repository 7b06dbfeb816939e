#!/usr/bin/env bash
# An emulated aarch64 device for tvmquant: TVM's own aarch64 RPC server, run under
# qemu user-mode emulation on this (x86-64, Debian) machine. See --help.
set -euo pipefail

ARM_DIR=${TVMQUANT_ARM_DIR:-${HOME:-/root}/.cache/tvmquant/arm64}
SYSROOT=$ARM_DIR/sysroot
SITE=$ARM_DIR/site
WRAPPER=$ARM_DIR/bin/python-aarch64
LOG=$ARM_DIR/server.log
PIDFILE=$ARM_DIR/server.pid
HOST_PYTHON=${TVMQUANT_HOST_PYTHON:-python3}
READY_TIMEOUT=${TVMQUANT_ARM_TIMEOUT:-120}

# libc6-dev-arm64-cross is only a Recommends of the cross gcc, but linking a .so needs its crti.o.
HOST_PKGS=(qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
SYSROOT_DEBS=(
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  libc6 libstdc++6 libgcc-s1 libgomp1 zlib1g libffi8 libexpat1 libssl3 libbz2-1.0 liblzma5
  libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1 libcrypt1 libnsl2 libtirpc3 libdb5.3
  libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1
)
WHEELS=(
  apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1
  numpy ml_dtypes typing_extensions psutil cloudpickle
)
WHEEL_PLATFORM_ARGS=(
  --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
  --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp
)

usage() {
  cat <<EOF
Usage: scripts/arm64-device.sh COMMAND [OPTIONS]

An emulated aarch64 device: the aarch64 build of TVM's RPC server, run under
qemu-aarch64-static, executing the aarch64 code we cross-compile. Results are real,
timings are not (emulation).

Commands:
  setup     Install host packages (${HOST_PKGS[*]}; needs root or sudo),
            unpack an aarch64 Python 3.11 into a sysroot and the aarch64 TVM wheels
            into a site folder, and write the python wrapper. Idempotent.
  start     Start the RPC server in the background and wait until it is ready
            (timeout ${READY_TIMEOUT} s; prints "ready HOST:PORT"). Exits 0 if one is already running
            with the same settings, 1 if one runs with different settings.
              --port PORT          port to bind (default 9091; exactly this port)
              --host HOST          address to bind (default 127.0.0.1)
              --tracker HOST:PORT  register with this RPC tracker (start the tracker first)
              --key KEY            device key for the tracker (required with --tracker)
  stop      Stop the server started by 'start' (exit 0 also if none runs).
  status    Report set-up state and server state; exit 0 if a server runs, else 3.
  --help    Show this text.

Environment:
  TVMQUANT_ARM_DIR      device folder (default \$HOME/.cache/tvmquant/arm64): sysroot/, site/,
                        bin/python-aarch64, server.log, server.pid
  TVMQUANT_HOST_PYTHON  host Python with tvm, used for pip and the readiness check (default python3)
  TVMQUANT_ARM_TIMEOUT  seconds 'start' waits for readiness (default 120)

Use from the host: build with Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
"mattr": ["+neon"]}), export with fcompile=tvm.support.cc.cross_compiler("aarch64-linux-gnu-gcc"),
then tvm.rpc.connect("127.0.0.1", PORT), or with a tracker
tvm.rpc.connect_tracker(HOST, PORT).request(KEY) (a tracker-registered server refuses direct
connections). Start a tracker with: python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port 9190
EOF
}

log() { echo "[arm64-device] $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"
  else die "need root (or sudo) for: $*"
  fi
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# ---------------------------------------------------------------- setup

setup_host_packages() {
  local need_update=0 missing=() p
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "adding dpkg architecture arm64"
    as_root dpkg --add-architecture arm64
    need_update=1
  fi
  for p in "${HOST_PKGS[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  # apt-get download of :arm64 debs needs arm64 package lists.
  if ! sysroot_done && ! apt-cache show python3.11-minimal:arm64 >/dev/null 2>&1; then
    need_update=1
  fi
  if ((${#missing[@]})); then need_update=1; fi
  if ((need_update)); then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  fi
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" </dev/null
  fi
}

# A stamp records what a folder was built from, so a changed list triggers a rebuild.
sysroot_stamp() { printf '%s\n' "${SYSROOT_DEBS[@]}"; }
site_stamp() { printf '%s\n' "${WHEELS[@]}"; }
sysroot_done() { [[ -f $SYSROOT/.stamp && "$(cat "$SYSROOT/.stamp")" == "$(sysroot_stamp)" ]]; }
site_done() { [[ -f $SITE/.stamp && "$(cat "$SITE/.stamp")" == "$(site_stamp)" ]]; }
setup_done() { sysroot_done && site_done && [[ -x $WRAPPER ]] && command -v qemu-aarch64-static >/dev/null; }

setup_sysroot() {
  if sysroot_done; then log "sysroot ready: $SYSROOT"; return; fi
  log "unpacking aarch64 debs into $SYSROOT"
  local dl=$ARM_DIR/debs deb
  rm -rf "$SYSROOT" "$dl"
  mkdir -p "$SYSROOT" "$dl"
  local apt_opts=()
  # As root, apt would warn that user _apt cannot write the download folder.
  [[ $EUID -eq 0 ]] && apt_opts=(-o APT::Sandbox::User=root)
  (cd "$dl" && apt-get download -qq "${apt_opts[@]}" "${SYSROOT_DEBS[@]/%/:arm64}")
  for deb in "$dl"/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  rm -rf "$dl"
  # qemu -L falls back to host paths that are missing in the sysroot; empty folders keep the
  # host's x86-64 dist-packages off the emulated sys.path.
  mkdir -p "$SYSROOT/usr/lib/python3/dist-packages" "$SYSROOT/usr/local/lib/python3.11/dist-packages"
  sysroot_stamp >"$SYSROOT/.stamp"
}

setup_site() {
  if site_done; then log "aarch64 wheels ready: $SITE"; return; fi
  log "installing aarch64 wheels into $SITE"
  local dl=$ARM_DIR/wheels pip=("$HOST_PYTHON" -m pip --disable-pip-version-check --no-input)
  rm -rf "$SITE" "$dl"
  mkdir -p "$dl"
  "${pip[@]}" download -q --no-cache-dir --no-deps "${WHEEL_PLATFORM_ARGS[@]}" -d "$dl" "${WHEELS[@]}"
  "${pip[@]}" install -q --root-user-action=ignore --no-cache-dir --no-deps --no-index "${WHEEL_PLATFORM_ARGS[@]}" \
    --target "$SITE" "$dl"/*.whl
  rm -rf "$dl"
  # The runtime-only server (TVM_USE_RUNTIME_LIB=1) never loads the 200+ MB compiler library.
  rm -f "$SITE/tvm/lib/libtvm_compiler.so"
  site_stamp >"$SITE/.stamp"
}

write_wrapper() {
  mkdir -p "$(dirname "$WRAPPER")"
  # -0 makes sys.executable this wrapper, so the server's worker processes
  # (started with sys.executable) are emulated too; there is no binfmt_misc here.
  cat >"$WRAPPER" <<EOF
#!/bin/sh
# aarch64 Python 3.11 under qemu user-mode emulation (written by scripts/arm64-device.sh)
export PYTHONHOME='$SYSROOT/usr' PYTHONPATH='$SITE' PYTHONNOUSERSITE=1
exec qemu-aarch64-static -L '$SYSROOT' -0 '$WRAPPER' '$SYSROOT/usr/bin/python3.11' "\$@"
EOF
  chmod +x "$WRAPPER"
}

check_wrapper() {
  local out
  out=$(TVM_USE_RUNTIME_LIB=1 "$WRAPPER" -c \
    'import platform, tvm; print(platform.machine(), tvm.__version__)' 2>&1) \
    || die "aarch64 python does not work: $out"
  log "aarch64 python: $out"
}

cmd_setup() {
  [[ $# -eq 0 ]] || die "setup takes no options"
  mkdir -p "$ARM_DIR"
  setup_host_packages
  setup_sysroot
  setup_site
  write_wrapper
  check_wrapper
  log "setup done: $ARM_DIR ($(du -sh "$ARM_DIR" | cut -f1))"
}

# ---------------------------------------------------------------- server

# Prints the pid of the running server from the pid file; fails if none runs.
running_pid() {
  local pid
  [[ -f $PIDFILE ]] || return 1
  read -r pid <"$PIDFILE" || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
    && grep -q 'tvm.exec.rpc_server' "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

running_settings() { sed -n 2p "$PIDFILE"; }

# Waits until the server is usable from the host, or it dies, or the timeout passes.
wait_ready() {
  "$HOST_PYTHON" - "$@" <<'PY'
import os, socket, sys, threading, time
pid, host, port, tracker, key, timeout = sys.argv[1:]
pid, port, deadline = int(pid), int(port), time.time() + float(timeout)
import tvm.rpc

def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def ready():
    if not tracker:
        tvm.rpc.connect(host, port).cpu()
        return True
    thost, tport = tracker.rsplit(":", 1)
    # A plain connect first: connect_tracker itself retries for 60 s when nothing listens.
    socket.create_connection((thost, int(tport)), timeout=5).close()
    info = tvm.rpc.connect_tracker(thost, int(tport)).summary()
    ours = any(s.get("key") == "server:" + key and s.get("addr", [None, None])[1] == port
               for s in info["server_info"])
    return ours and info["queue_info"].get(key, {}).get("free", 0) > 0

def probe():
    # tvm.rpc.connect has no timeout: a listener that never answers would block it forever.
    result = []
    def run():
        try:
            result.append(ready())
        except Exception:
            result.append(False)
    threading.Thread(target=run, daemon=True).start()
    for _ in range(150):
        if result or not alive():
            break
        time.sleep(0.1)
    return bool(result and result[0])

while time.time() < deadline and alive():
    if probe():
        os._exit(0)
    time.sleep(2)
os._exit(1)  # not sys.exit: a probe thread may still be blocked
PY
}

cmd_start() {
  local port=9091 host=127.0.0.1 tracker="" key=""
  while (($#)); do
    case $1 in
      --port) port=${2:?--port needs a value}; shift 2 ;;
      --host) host=${2:?--host needs a value}; shift 2 ;;
      --tracker) tracker=${2:?--tracker needs HOST:PORT}; shift 2 ;;
      --key) key=${2:?--key needs a value}; shift 2 ;;
      *) die "unknown option for start: $1" ;;
    esac
  done
  [[ -z $tracker || -n $key ]] || die "--tracker needs --key"
  setup_done || die "not set up; run: $0 setup"

  local settings="host=$host port=$port tracker=$tracker key=$key" pid
  if pid=$(running_pid); then
    if [[ $(running_settings) == "$settings" ]]; then
      echo "already running (pid $pid, $settings)"
      return 0
    fi
    die "a server with other settings is running (pid $pid, $(running_settings)); stop it first"
  fi

  local server_args=(--host "$host" --port "$port" --port-end "$((port + 1))"
    --load-library "$SITE/tvm/lib/libtvm_runtime_extra.so")
  [[ -n $tracker ]] && server_args+=(--tracker "$tracker" --key "$key")
  log "starting aarch64 RPC server ($settings), log: $LOG"
  # setsid: the server gets its own process group, so 'stop' can end it with its workers.
  # The inner shell writes its own pid, which is the server's once it execs.
  # shellcheck disable=SC2016
  TVM_USE_RUNTIME_LIB=1 setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' _ \
    "$PIDFILE.tmp" "$WRAPPER" -m tvm.exec.rpc_server "${server_args[@]}" \
    </dev/null >"$LOG" 2>&1 &
  local waited=0
  until [[ -s $PIDFILE.tmp ]] || ((waited++ > 50)); do sleep 0.1; done
  read -r pid <"$PIDFILE.tmp" && rm -f "$PIDFILE.tmp"
  printf '%s\n%s\n' "$pid" "$settings" >"$PIDFILE"

  local check_host=$host
  [[ $host == 0.0.0.0 ]] && check_host=127.0.0.1
  if ! wait_ready "$pid" "$check_host" "$port" "$tracker" "$key" "$READY_TIMEOUT"; then
    log "server not ready after ${READY_TIMEOUT} s (or it exited); log tail:"
    tail -n 30 "$LOG" >&2 || true
    stop_server "$pid"
    exit 1
  fi
  echo "ready $check_host:$port"
}

stop_server() {
  local pid=$1 _
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  # Workers of the group may outlive the server; end the whole group.
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
}

cmd_stop() {
  local pid
  if pid=$(running_pid); then
    stop_server "$pid"
    echo "stopped server (pid $pid)"
  else
    rm -f "$PIDFILE"
    echo "no server running"
  fi
}

cmd_status() {
  local pid
  if setup_done; then echo "setup: done ($ARM_DIR)"; else echo "setup: not done ($ARM_DIR)"; fi
  if pid=$(running_pid); then
    echo "server: running (pid $pid, $(running_settings))"
  else
    echo "server: not running"
    return 3
  fi
}

main() {
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
    setup) cmd_setup "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
