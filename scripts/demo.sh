#!/usr/bin/env bash
# Demo: build (release), start ckptd in a temp dir, run examples/counter.c
# under ckpt-run, checkpoint it, kill it, restore it, watch it continue for
# 2 s, then clean up everything that was started.
# Usage: scripts/demo.sh   (CKPT_BIN_DIR=target/debug scripts/demo.sh skips the build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -f "$HOME/.cargo/env" ] && ! command -v cargo >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

# CKPT_BIN_DIR=dir: use the binaries there and skip the build.
if [ -z "${CKPT_BIN_DIR:-}" ]; then
    cargo build --release --workspace
fi
BIN="${CKPT_BIN_DIR:-$PWD/target/release}"

tmp="$(mktemp -d /tmp/ckpt-demo.XXXXXX)"
ckptd_pid=""
app_pid=""
sed_pid=""
cat_pid=""

wait_gone() { # pid: wait (max 10 s) until /proc/pid disappears
    local i
    for i in $(seq 1 1000); do
        [ -e "/proc/$1" ] || return 0
        sleep 0.01
    done
    echo "demo: pid $1 did not go away" >&2
    return 1
}

cleanup() {
    set +e
    if [ -n "$app_pid" ] && [ -e "/proc/$app_pid" ]; then
        kill -9 "$app_pid" 2>/dev/null
        wait "$app_pid" 2>/dev/null   # reaps it if it is still our child
        wait_gone "$app_pid"
    fi
    if [ -n "$ckptd_pid" ]; then
        kill -TERM "$ckptd_pid" 2>/dev/null
        for _ in $(seq 1 100); do
            kill -0 "$ckptd_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$ckptd_pid" 2>/dev/null
        wait "$ckptd_pid" 2>/dev/null
    fi
    if [ -n "$cat_pid" ]; then
        kill "$cat_pid" 2>/dev/null
        wait "$cat_pid" 2>/dev/null
    fi
    if [ -n "$sed_pid" ]; then
        # exits once the restored program is gone (EOF on its pipe)
        for _ in $(seq 1 100); do
            kill -0 "$sed_pid" 2>/dev/null || break
            sleep 0.05
        done
        kill "$sed_pid" 2>/dev/null
        wait "$sed_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

gcc -O1 -pthread -Wall -o "$tmp/counter" examples/counter.c

sock="$tmp/ckptd.sock"
"$BIN/ckptd" --socket "$sock" --store "$tmp/store" 2>"$tmp/ckptd.log" &
ckptd_pid=$!
connectable() {
    /usr/bin/python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$1" 2>/dev/null
}
for _ in $(seq 1 300); do
    connectable "$sock" && break
    kill -0 "$ckptd_pid" 2>/dev/null || { echo "demo: ckptd died:" >&2; cat "$tmp/ckptd.log" >&2; exit 1; }
    sleep 0.1
done
connectable "$sock" || { echo "demo: ckptd socket not ready" >&2; exit 1; }
export CKPT_SOCKET="$sock"
echo "== ckptd running (pid $ckptd_pid), store $tmp/store"

# Close every fd above 2 that this shell inherited (a build tool's jobserver
# pipe, say): ckpt refuses to checkpoint pipes that are not stdio.
run_clean() {
    local fd
    for fd in $(ls "/proc/$BASHPID/fd"); do
        if [ "$fd" -gt 2 ]; then
            eval "exec $fd>&-" 2>/dev/null || true
        fi
    done
    exec "$@"
}
# stdout is a pipe (ckpt hands pipe/tty stdio over to `ckptctl restore`), read by a cat that
# is this script's child: one the program forked (as `> >(cat)` would make it) would have to be
# in the checkpoint too.
# (A coproc's fds are not passed to subshells: its input is given a number of its own first.)
coproc OUT { exec cat >"$tmp/before.out"; }
cat_pid=$OUT_PID
exec 7>&"${OUT[1]}"
run_clean "$BIN/ckpt-run" -- "$tmp/counter" >&7 &
app_pid=$!
exec 7>&-
sleep 1.5
echo "== counter running as pid $app_pid; last lines:"
tail -n 3 "$tmp/before.out"

echo "== ckptctl status"
"$BIN/ckptctl" status
id="$("$BIN/ckptctl" checkpoint)"
echo "== checkpoint id: $id   (counter at: $(tail -n 1 "$tmp/before.out"))"
sleep 0.5
kill -9 "$app_pid"
wait "$app_pid" 2>/dev/null || true
wait_gone "$app_pid"
echo "== killed pid $app_pid; last line before the kill: $(tail -n 1 "$tmp/before.out")"

echo "== ckptctl restore $id   (the restored program now writes to ckptctl's stdout pipe:)"
"$BIN/ckptctl" restore "$id" > >(echo "$BASHPID" >"$tmp/sed.pid"; exec sed -u 's/^/   restored: /')
for _ in $(seq 1 100); do [ -s "$tmp/sed.pid" ] && break; sleep 0.01; done
# the process substitution is waited for in cleanup (PID 1 may not reap)
sed_pid="$(cat "$tmp/sed.pid" 2>/dev/null || true)"
echo "== ckptctl restore exited; pid $app_pid is $( [ -e /proc/$app_pid ] && echo alive || echo NOT alive ); watching for 2 s"
sleep 2
echo "== done, cleaning up"
