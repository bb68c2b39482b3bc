#!/usr/bin/env bash
# Install brain on a robot (run as root: `sudo make install`), or stage it into DESTDIR.
#
# Settings (environment variables; `make install` passes DESTDIR and PREFIX):
#   DESTDIR                  staging root; empty = the live system. When set, no users are
#                            created and systemctl is not called.
#   PREFIX                   install prefix (default /opt/brain); the venv is $PREFIX/venv.
#   UNITDIR                  where the units go (default /etc/systemd/system).
#   PYTHON                   interpreter that creates the venv (default python3).
#   ROBOT_PROFILE            profile written into a fresh /etc/brain/brain.toml
#                            (default pi5-donkey on aarch64, else sim).
#   BRAIN_INSTALL_EXTRAS     package extras (default "pi" on aarch64, else none).
#   BRAIN_INSTALL_SOURCE     what pip installs (default: this checkout; a built wheel works).
#   BRAIN_INSTALL_PIP_ARGS   extra pip arguments, e.g. "--no-deps --no-index" to reuse wheels
#                            already at hand (the tests use it to stay fast and offline).
#
# Running it again upgrades in place. An edited /etc/brain/brain.toml is never overwritten: the
# new default goes beside it as brain.toml.dist.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
PREFIX="${PREFIX:-/opt/brain}"
PREFIX="${PREFIX%/}"
UNITDIR="${UNITDIR:-/etc/systemd/system}"
PYTHON="${PYTHON:-python3}"
arch="$(uname -m)"
if [ "$arch" = aarch64 ]; then
    ROBOT_PROFILE="${ROBOT_PROFILE:-pi5-donkey}"
    BRAIN_INSTALL_EXTRAS="${BRAIN_INSTALL_EXTRAS-pi}"
else
    ROBOT_PROFILE="${ROBOT_PROFILE:-sim}"
    BRAIN_INSTALL_EXTRAS="${BRAIN_INSTALL_EXTRAS-}"
fi
BRAIN_INSTALL_SOURCE="${BRAIN_INSTALL_SOURCE:-$here}"
read -r -a pip_args <<< "${BRAIN_INSTALL_PIP_ARGS:-}"

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo make install), or set DESTDIR to stage into a directory"
fi
case "$ROBOT_PROFILE" in sim|pi5-donkey) ;; *) die "ROBOT_PROFILE=$ROBOT_PROFILE: not sim or pi5-donkey";; esac
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON: no such interpreter"

root="$DESTDIR"
venv="$root$PREFIX/venv"
share="$root$PREFIX/share/brain"
confdir="$root/etc/brain"

# -- user and groups ------------------------------------------------------------------------
# systemd-sysusers reads a declarative file (also shipped, so image builders can apply it):
# the brain system user and group, the device groups when missing, and the memberships.
install -d -m 0755 "$root/etc/sysusers.d"
install -m 0644 "$here/systemd/brain.sysusers" "$root/etc/sysusers.d/brain.conf"
if [ -n "$DESTDIR" ]; then
    say "DESTDIR set: not creating the brain user (apply $root/etc/sysusers.d/brain.conf"
    say "  on the target with: systemd-sysusers /etc/sysusers.d/brain.conf)"
elif command -v systemd-sysusers >/dev/null; then
    systemd-sysusers /etc/sysusers.d/brain.conf
    say "user brain and groups i2c, video, gpio, dialout present"
else
    for g in i2c video gpio dialout; do
        getent group "$g" >/dev/null || groupadd --system "$g"
    done
    getent passwd brain >/dev/null || useradd --system --user-group --home-dir /var/lib/brain \
        --no-create-home --shell /usr/sbin/nologin --comment "brain robot runtime" brain
    usermod -a -G i2c,video,gpio,dialout brain
    say "user brain and groups i2c, video, gpio, dialout present"
fi

# -- the venv and the package -----------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
    # System site packages: picamera2 and libcamera come from Pi OS's apt packages.
    "$PYTHON" -m venv --system-site-packages "$venv"
    say "created venv $PREFIX/venv"
fi
spec="$BRAIN_INSTALL_SOURCE"
[ -n "$BRAIN_INSTALL_EXTRAS" ] && spec="$spec[$BRAIN_INSTALL_EXTRAS]"
# --force-reinstall --no-deps for the package itself: a checkout's version number does not
# change with every commit, and pip would otherwise call an older build "already satisfied".
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$here/constraints.txt" "${pip_args[@]}" "$spec"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --force-reinstall "${pip_args[@]}" "$BRAIN_INSTALL_SOURCE"
if [ -n "$DESTDIR" ]; then
    # Scripts and activate files name the venv by its staging path; make them name the path
    # the tree is meant for, so the staged tree is right once copied to /.
    grep -rlI --null -F "$venv" "$venv/bin" "$venv/pyvenv.cfg" 2>/dev/null \
        | xargs -0 -r sed -i "s|$venv|$PREFIX/venv|g"
fi
say "installed brain $("$venv/bin/python" -c 'import brain; print(brain.__version__)') into $PREFIX/venv"

install -d -m 0755 "$share" "$root$PREFIX/share/doc/brain"
install -m 0644 "$here/docs/robot-setup.md" "$root$PREFIX/share/doc/brain/robot-setup.md"

# -- configuration (dpkg's conffile rule) -------------------------------------------------------
# $share/brain.toml.installed remembers what we installed last: a config still equal to it was
# not edited and may be replaced; anything else is the owner's and stays.
candidate="$(mktemp)"
trap 'rm -f "$candidate"' EXIT
if [ -f "$here/etc/brain.toml" ]; then
    cp "$here/etc/brain.toml" "$candidate"
else
    "$venv/bin/python" -c 'from brain.config import render_toml; print(render_toml(), end="")' \
        > "$candidate"
fi
sed -i "s/^profile = \"sim\"$/profile = \"$ROBOT_PROFILE\"/" "$candidate"
# On the robot the API serves the LAN over HTTPS (TLS is automatic off loopback) on 8443.
sed -i -e 's/^host = "127.0.0.1"$/host = "0.0.0.0"/' -e 's/^port = 8080$/port = 8443/' "$candidate"
install -d -m 0755 "$confdir"
# Trusted bundle publisher keys (*.pub) go here (ota.trusted_keys_dir); none by default.
install -d -m 0755 "$confdir/keys"
target="$confdir/brain.toml"
record="$share/brain.toml.installed"
conf_group=root
[ -z "$DESTDIR" ] && conf_group=brain
if [ ! -e "$target" ]; then
    install -m 0640 -g "$conf_group" "$candidate" "$target"
    say "installed /etc/brain/brain.toml (profile $ROBOT_PROFILE)"
elif cmp -s "$target" "$candidate"; then
    say "/etc/brain/brain.toml unchanged"
elif [ -f "$record" ] && cmp -s "$target" "$record"; then
    install -m 0640 -g "$conf_group" "$candidate" "$target"
    say "updated /etc/brain/brain.toml to the new default (it had not been edited)"
else
    install -m 0644 "$candidate" "$confdir/brain.toml.dist"
    say "kept your edited /etc/brain/brain.toml; the new default is /etc/brain/brain.toml.dist"
    say "  (compare: diff -u /etc/brain/brain.toml /etc/brain/brain.toml.dist)"
fi
install -m 0644 "$candidate" "$record"

if [ ! -e "$root/etc/default/brain" ]; then
    install -d -m 0755 "$root/etc/default"
    cat > "$root/etc/default/brain" <<'EOF'
# Environment for brain.service and brain-trainer.service (read after the units' defaults).
# CONTINUON_HEADLESS=1
# Set to 1, then `systemctl enable --now brain-trainer`, to run the background trainer.
# CONTINUON_ENABLE_BACKGROUND_TRAINER=0
# CONTINUON_EXPORT_ORIGIN=pi5
EOF
    chmod 0644 "$root/etc/default/brain"
fi

# -- units --------------------------------------------------------------------------------------
install -d -m 0755 "$root$UNITDIR"
for unit in brain.service brain-trainer.service; do
    sed "s|/opt/brain|$PREFIX|g" "$here/systemd/$unit" > "$root$UNITDIR/$unit"
    chmod 0644 "$root$UNITDIR/$unit"
done
say "installed brain.service and brain-trainer.service into $UNITDIR"

if [ -n "$DESTDIR" ]; then
    say "DESTDIR set: skipping systemctl daemon-reload and enable"
    say "  (on the target: systemctl daemon-reload && systemctl enable brain.service)"
elif [ ! -d /run/systemd/system ]; then
    say "systemd is not running here (not PID 1): skipping daemon-reload and enable"
    say "  (on the robot: systemctl daemon-reload && systemctl enable brain.service)"
else
    systemctl daemon-reload
    # Enabling creates the multi-user.target.wants link and the continuonbrain-startup alias.
    systemctl enable brain.service
    say "enabled brain.service (alias continuonbrain-startup.service); start it with:"
    say "  systemctl start brain   (or restart, if it was running)"
    say "the background trainer stays disabled; see docs/robot-setup.md to enable it"
fi
