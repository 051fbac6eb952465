#!/usr/bin/env bash
# Install the real peers the test suite runs against, when they are missing, and
# the packaging tools tests/packaging.rs uses (systemd-analyze, dpkg-deb, cargo-deb).
#
# Idempotent: on a machine that already has everything it touches nothing and
# prints one line per peer. On a fresh Debian 12 machine it runs `apt-get update`
# once, installs the missing Debian packages, then pip-installs the missing
# Python modules. See docs/testing.md.
#
# The Debian packages prosody and ejabberd come with system services; the tests
# never use them (each test starts its own instance on free loopback ports), so
# this script keeps the package scripts from starting them (policy-rc.d) and
# stops/disables them if they were started anyway.
set -euo pipefail

log() { printf 'install-peers: %s\n' "$*"; }
die() { printf 'install-peers: ERROR: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
# ejabberdctl lives in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    fi
fi
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif [ "${#SUDO[@]}" -gt 0 ]; then
        "${SUDO[@]}" "$@"
    else
        die "need root (or passwordless sudo) to run: $*"
    fi
}

# ---------------------------------------------------------------- Debian packages
# binary -> Debian package that provides it
declare -A DEB_FOR=(
    [prosody]=prosody
    [prosodyctl]=prosody
    [ejabberdctl]=ejabberd
    [sipp]=sip-tester
    [socat]=socat
    [baresip]=baresip-core
    [openssl]=openssl
    [python3]=python3
    [systemd-analyze]=systemd
    [dpkg-deb]=dpkg
)

# LCS_BRIDGE_FORCE_INSTALL=1 treats everything as missing (to exercise the
# install path on a machine that already has the peers; apt/pip then no-op).
force=${LCS_BRIDGE_FORCE_INSTALL:-0}

missing_pkgs=()
for bin in prosody prosodyctl ejabberdctl sipp socat baresip openssl python3 systemd-analyze dpkg-deb; do
    if [ "$force" != 1 ] && path=$(command -v "$bin" 2>/dev/null); then
        log "found $bin: $path"
    else
        pkg=${DEB_FOR[$bin]}
        log "missing $bin (package $pkg)"
        case " ${missing_pkgs[*]-} " in *" $pkg "*) ;; *) missing_pkgs+=("$pkg") ;; esac
    fi
done
if ! python3 -m pip --version >/dev/null 2>&1; then
    log "missing pip for python3 (package python3-pip)"
    missing_pkgs+=(python3-pip)
fi
# Not a binary: Prosody's XEP-0356 module (tests/roster_e2e.rs), from prosody-modules.
MOD_PRIVILEGE=/usr/lib/prosody/modules/mod_privilege/mod_privilege.lua
if [ "$force" != 1 ] && [ -f "$MOD_PRIVILEGE" ]; then
    log "found prosody mod_privilege: $MOD_PRIVILEGE"
else
    log "missing prosody mod_privilege (package prosody-modules)"
    missing_pkgs+=(prosody-modules)
fi
# Not on PATH: PostgreSQL's server programs (tests/store_pg.rs and the high-availability
# tests start their own server with initdb + postgres), under /usr/lib/postgresql/<major>/bin.
pg_initdb() { ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1; }
if [ "$force" != 1 ] && [ -n "$(pg_initdb)" ]; then
    log "found postgresql: $(pg_initdb)"
else
    log "missing postgresql server (package postgresql)"
    missing_pkgs+=(postgresql)
fi

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing_pkgs[*]}"
    installing_daemons=0
    case " ${missing_pkgs[*]} " in *" prosody "* | *" ejabberd "* | *" postgresql "*) installing_daemons=1 ;; esac

    # Keep package maintainer scripts from starting system services (exit 101 =
    # "action forbidden" for invoke-rc.d / deb-systemd-invoke). Only add the file
    # if there is none, and remove only what we added.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        created_policy=1
    fi
    cleanup_policy() {
        if [ "$created_policy" -eq 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
    }
    trap cleanup_policy EXIT

    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    log "apt-get install ${missing_pkgs[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing_pkgs[@]}"

    cleanup_policy
    created_policy=0
    trap - EXIT

    if [ "$installing_daemons" -eq 1 ]; then
        # Belt and braces: if a service got started anyway (no policy-rc.d honoured,
        # socket activation...), stop it and keep it from starting at boot, so no
        # system prosody/ejabberd/epmd holds ports or state while tests run.
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            for unit in prosody.service ejabberd.service epmd.service epmd.socket postgresql.service; do
                as_root systemctl disable --now "$unit" >/dev/null 2>&1 || true
            done
        else
            for svc in prosody ejabberd postgresql; do
                if [ -x "/etc/init.d/$svc" ]; then
                    as_root "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
                fi
            done
        fi
        # ejabberd's postinst may run `ejabberdctl status`, which starts an epmd on
        # 0.0.0.0:4369; our ejabberd instances use ERL_DIST_PORT and need none. Stop it
        # if no Erlang node is registered with it.
        if command -v epmd >/dev/null 2>&1 && epmd -names >/dev/null 2>&1 \
            && ! epmd -names 2>/dev/null | grep -q '^name '; then
            epmd -kill >/dev/null 2>&1 || true
        fi
    fi

    for bin in prosody prosodyctl ejabberdctl sipp socat baresip openssl python3 systemd-analyze dpkg-deb; do
        command -v "$bin" >/dev/null 2>&1 || die "$bin still missing after apt-get install"
    done
    [ -f "$MOD_PRIVILEGE" ] || die "$MOD_PRIVILEGE still missing after apt-get install"
    [ -n "$(pg_initdb)" ] || die "PostgreSQL's initdb still missing after apt-get install"
else
    log "all Debian packages present; apt-get not run"
fi

# ---------------------------------------------------------------- Python modules
# import name -> PyPI distribution
declare -A PYPI_FOR=(
    [slixmpp]=slixmpp
    [pjsua2]=pjsua2-python
)
missing_py=()
for mod in slixmpp pjsua2; do
    if [ "$force" != 1 ] && python3 -c "import $mod" >/dev/null 2>&1; then
        log "found python module $mod"
    else
        log "missing python module $mod (PyPI ${PYPI_FOR[$mod]})"
        missing_py+=("${PYPI_FOR[$mod]}")
    fi
done

if [ "${#missing_py[@]}" -gt 0 ]; then
    # Debian's own python3 is "externally managed" (PEP 668); these test-only
    # modules go beside it anyway. Both variables are ignored by pips that do not
    # know them.
    export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
    log "pip install ${missing_py[*]}"
    pip_user=()
    if [ "$(id -u)" -ne 0 ] && ! python3 -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)' \
        && [ ! -w "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" ]; then
        pip_user=(--user)
    fi
    python3 -m pip install -q ${pip_user[@]+"${pip_user[@]}"} "${missing_py[@]}"
    python3 -c 'import slixmpp, pjsua2' || die "python modules still not importable after pip install"
else
    log "all python modules present; pip not run"
fi

# ---------------------------------------------------------------- cargo-deb
# The Debian package's test (tests/packaging.rs) runs `cargo deb --no-build`. A pinned version:
# it packages the test run's own (dev profile) binary, which later versions may refuse.
CARGO_DEB_VERSION=3.8.0
for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    case ":$PATH:" in *":$d:"*) ;; *) [ -d "$d" ] && PATH="$d:$PATH" ;; esac
done
if [ "$force" != 1 ] && cargo-deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION\|$CARGO_DEB_VERSION"; then
    log "found cargo-deb $CARGO_DEB_VERSION: $(command -v cargo-deb)"
elif command -v cargo >/dev/null 2>&1; then
    log "cargo install cargo-deb $CARGO_DEB_VERSION (a few minutes, once)"
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet
    command -v cargo-deb >/dev/null 2>&1 || die "cargo-deb still missing after cargo install"
else
    die "cargo not found: install the Rust toolchain (rustup), then run this script again"
fi

log "peers ready"
