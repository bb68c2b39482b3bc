#!/usr/bin/env bash
# Remove what scripts/install.sh installed. Run as root (`sudo make uninstall`) or with DESTDIR.
#
# Settings: DESTDIR, PREFIX, UNITDIR as for install.sh, and
#   PURGE=1   also remove the data (/var/lib/brain, /var/log/brain), an edited
#             /etc/brain/brain.toml, /etc/default/brain and the brain user and group.
# Without PURGE the recorded episodes, models and keys in /var/lib/brain stay, and so does an
# edited configuration. The device groups (i2c, video, gpio, dialout) always stay: other
# software uses them.
set -euo pipefail

DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
PREFIX="${PREFIX:-/opt/brain}"
PREFIX="${PREFIX%/}"
UNITDIR="${UNITDIR:-/etc/systemd/system}"
PURGE="${PURGE:-0}"
root="$DESTDIR"

say() { printf 'uninstall: %s\n' "$*"; }
die() { printf 'uninstall: error: %s\n' "$*" >&2; exit 1; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo make uninstall), or set DESTDIR"
fi
case "$PREFIX" in /|/usr|/usr/local|/etc|/var) die "PREFIX=$PREFIX: refusing to delete that";; esac

live_systemd=0
[ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && live_systemd=1
if [ "$live_systemd" = 1 ]; then
    # Stopping runs the daemon's orderly shutdown: episode finalised, actuators neutral.
    systemctl disable --now brain-trainer.service brain.service 2>/dev/null || true
    say "stopped and disabled brain.service and brain-trainer.service"
fi
# Links `systemctl enable` made (also when it ran on another root, e.g. an image build).
rm -f "$root$UNITDIR/continuonbrain-startup.service" \
      "$root$UNITDIR/multi-user.target.wants/brain.service" \
      "$root$UNITDIR/multi-user.target.wants/brain-trainer.service"
rm -f "$root$UNITDIR/brain.service" "$root$UNITDIR/brain-trainer.service"
say "removed the units"

# The configuration: remove it only if it is still what we installed (or when purging).
target="$root/etc/brain/brain.toml"
record="$root$PREFIX/share/brain/brain.toml.installed"
rm -f "$root/etc/brain/brain.toml.dist"
if [ -e "$target" ]; then
    if [ "$PURGE" = 1 ] || { [ -f "$record" ] && cmp -s "$target" "$record"; }; then
        rm -f "$target"
        rmdir "$root/etc/brain" 2>/dev/null || true
        say "removed /etc/brain/brain.toml"
    else
        say "kept your edited /etc/brain/brain.toml (PURGE=1 removes it)"
    fi
fi

rm -rf "${root:?}$PREFIX/venv" "$root$PREFIX/share/brain" "$root$PREFIX/share/doc/brain"
rmdir "$root$PREFIX/share/doc" "$root$PREFIX/share" "$root$PREFIX" 2>/dev/null || true
say "removed $PREFIX"

rm -f "$root/etc/sysusers.d/brain.conf"
if [ "$PURGE" = 1 ]; then
    rm -rf "$root/var/lib/brain" "$root/var/log/brain" "$root/etc/default/brain"
    if [ -z "$DESTDIR" ] && getent passwd brain >/dev/null; then
        userdel brain
        getent group brain >/dev/null && groupdel brain
        say "removed the brain user and group"
    fi
    say "purged /var/lib/brain and /var/log/brain"
else
    [ -d "$root/var/lib/brain" ] && say "kept /var/lib/brain (PURGE=1 removes data and the user)"
fi

if [ "$live_systemd" = 1 ]; then
    systemctl daemon-reload
fi
say "done"
