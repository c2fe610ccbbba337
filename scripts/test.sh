#!/usr/bin/env bash
# Installs what the tests need (only what is missing), builds the workspace
# and runs the whole test suite.  Idempotent; used by .ci/run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -f "$HOME/.cargo/env" ] && ! command -v cargo >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
# tests/tests/process_churn.rs builds a C project with make -j2.
[ -x /usr/bin/make ] || missing+=(make)
# tests/tests/process_tree.rs restores zsh and tcsh loops.
[ -x /usr/bin/zsh ] || missing+=(zsh)
[ -x /usr/bin/tcsh ] || missing+=(tcsh)
[ -f /usr/include/stdio.h ] || missing+=(libc6-dev)
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# The sqlite tests check databases with the sqlite3 CLI (python3's sqlite3 module writes them).
[ -x /usr/bin/sqlite3 ] || missing+=(sqlite3)
# Real servers restored by tests/tests/servers.rs.
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ -x /usr/bin/redis-benchmark ] || missing+=(redis-tools)
[ -x /usr/bin/memcached ] || missing+=(memcached)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
# Terminal multiplexers restored by tests/tests/terminals.rs (top is procps').
[ -x /usr/bin/tmux ] || missing+=(tmux)
[ -x /usr/bin/screen ] || missing+=(screen)
[ -x /usr/bin/top ] || missing+=(procps)
# PostgreSQL restored under its own user's ckptd by tests/tests/postgres.rs (initdb in a temporary
# folder; setpriv, from util-linux, starts that ckptd with CAP_CHECKPOINT_RESTORE).
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)

if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing: ${missing[*]}" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [[ " ${missing[*]} " == *" postgresql "* ]]; then
        # The tests make their own clusters: the package is not to create (and start) one.
        $SUDO mkdir -p /etc/postgresql-common/createcluster.d
        echo 'create_main_cluster = false' | $SUDO tee /etc/postgresql-common/createcluster.d/ckpt-tests.conf >/dev/null
    fi
    $SUDO apt-get update
    $SUDO apt-get install -y "${missing[@]}"
fi

cargo build --workspace
cargo test --workspace -- --test-threads=2
