#!/usr/bin/env bash
# Kamailio for `lcs-load --gateway kamailio` (docs/benchmarks.md "Kamailio side by side").
#
# Installs Debian's kamailio and kamailio-tls-modules, and builds the xmpp module from Debian's
# source package of the same version with one fix (below) into a private directory:
#
#     $LCS_KAMAILIO_DIR (default ~/.cache/lcs-load/kamailio)/<version>/xmpp.so
#
# Nothing of the product is touched, and Debian's own module directory is left alone: kamailio
# loads the fixed module by its path. Idempotent: a second run finds the module built for the
# installed version and does nothing. Needs root (apt-get) the first time.
#
# The fix, in src/modules/xmpp/xstream.c: `_xode_put_expatattribs` copies expat's attribute
# list, which ends with a NULL pointer, with `while (*(atts[i]) != '\0')`: it dereferences that
# NULL after the last attribute, so the XMPP Manager process crashes on the first element it
# reads, the server's stream header (and would on any element), and Kamailio shuts down. The
# loop must test the pointer: `while (atts[i] != NULL)`.
#
#     setup.sh           install, build (once), print the module's path
#     setup.sh --path    print where the module is (exit 1 when it is not built yet)
set -euo pipefail

cache=${LCS_KAMAILIO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lcs-load/kamailio}

say() { printf 'kamailio setup: %s\n' "$*" >&2; }

module_dir() {
    local version
    version=$(dpkg-query -W -f='${Version}' kamailio 2>/dev/null) || return 1
    echo "$cache/$version"
}

if [[ ${1:-} == --path ]]; then
    out=$(module_dir) || { say "kamailio is not installed: run $0"; exit 1; }
    echo "$out/xmpp.so"
    [[ -f "$out/xmpp.so" ]]
    exit
fi

install_packages() {
    local need=() p
    for p in kamailio kamailio-tls-modules libexpat1-dev gcc make bison flex dpkg-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
    done
    ((${#need[@]})) || return 0
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian's package starts its own service where systemd runs; the benchmark starts its own
    # instances, on their own ports.
    if command -v systemctl >/dev/null && systemctl is-active --quiet kamailio 2>/dev/null; then
        systemctl disable --now kamailio >/dev/null 2>&1 || true
    fi
}
install_packages

version=$(dpkg-query -W -f='${Version}' kamailio)
out=$(module_dir)
if [[ -f "$out/xmpp.so" ]]; then
    say "the fixed xmpp module for kamailio $version is built"
    echo "$out/xmpp.so"
    exit 0
fi

# Debian's source package of the installed version, with Debian's patches applied.
mkdir -p "$out/src"
cd "$out/src"
if ! ls -d kamailio-*/ >/dev/null 2>&1; then
    if ! ls kamailio_*.dsc >/dev/null 2>&1; then
        if ! apt-get source --only-source --download-only "kamailio=$version" >/dev/null 2>&1; then
            say "adding a deb-src entry for Debian's sources"
            # shellcheck disable=SC1091
            . /etc/os-release
            cat >/etc/apt/sources.list.d/lcs-load-deb-src.sources <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME $VERSION_CODENAME-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
            apt-get update -qq
            apt-get source --only-source --download-only "kamailio=$version" >/dev/null
        fi
    fi
    dpkg-source -x kamailio_*.dsc >/dev/null
fi
src=$(ls -d "$out"/src/kamailio-*/ | head -n1)
src=${src%/}

# The fix (see the top of this file). Fails loudly when the line is not there as expected.
xs="$src/src/modules/xmpp/xstream.c"
if grep -q 'while (\*(atts\[i\]) != '"'"'\\0'"'"')' "$xs"; then
    sed -i 's/while (\*(atts\[i\]) != '"'"'\\0'"'"')/while (atts[i] != NULL)/' "$xs"
fi
grep -q 'while (atts\[i\] != NULL)' "$xs" || { say "the expected line is not in $xs"; exit 1; }

# Configured as debian/rules configures the package (same flags, so the module's build
# options match the installed core's), then only the xmpp module is built.
say "building the xmpp module in $src"
export DEB_BUILD_MAINT_OPTIONS=hardening=+all
(
    cd "$src"
    make cfg quiet=verbose prefix=/usr FLAVOUR=kamailio \
        CC_EXTRA_OPTS="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CFLAGS) -DVERSION_NODATE" \
        LD_EXTRA_OPTS="$(dpkg-buildflags --get LDFLAGS)" \
        LIBDIR="lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)" >"$out/build.log" 2>&1
    make -C src/modules/xmpp >>"$out/build.log" 2>&1
) || { say "build failed: see $out/build.log"; exit 1; }
install -m 0644 "$src/src/modules/xmpp/xmpp.so" "$out/xmpp.so.tmp"
mv "$out/xmpp.so.tmp" "$out/xmpp.so"
say "built $out/xmpp.so"
echo "$out/xmpp.so"
