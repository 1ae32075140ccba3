#!/usr/bin/env bash
# Set up clusterfw on a Debian 12 host, in one command (run as root):
#   1. the apt packages it needs (python3-venv among them);
#   2. a virtual environment /opt/clusterfw (with the system site packages,
#      so Debian's python3-* packages are used where installed) holding
#      clusterfw, editable from this checkout, with the test, systemd and lab
#      extras (Debian's own pip refuses to install into the system Python:
#      PEP 668, "externally-managed-environment");
#   3. /usr/local/bin/clusterfw (and every other console script of the
#      package) linked to that environment;
#   4. the systemd units in /usr/local/lib/systemd/system, the udev rule in
#      /etc/udev/rules.d (its autostart line commented), and /etc/clusterfw/
#      with clusterfw.conf.example.
# It starts and enables nothing, never overwrites /etc/clusterfw/clusterfw.conf,
# and can be run again at any time (after a `git pull`, say).
# PYTHON=/path/to/python3.11 picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd -P)

VENV=/opt/clusterfw
BIN_DIR=/usr/local/bin
UNIT_DIR=/usr/local/lib/systemd/system
UDEV_DIR=/etc/udev/rules.d
CONF_DIR=/etc/clusterfw
# What this script last put in UDEV_DIR: a copy there that still equals it
# is ours to update; one that differs was edited by hand and is kept.
RECORD_DIR=$VENV/share/clusterfw/installed
PYTHON=${PYTHON:-python3}
EXTRAS=test,systemd,lab

APT_PACKAGES=(
  # the interpreter and its venv module (ensurepip)
  python3 python3-venv
  # building systemd-python (sd_notify, journal)
  libsystemd-dev pkg-config gcc python3-dev
  # real block devices and filesystems for the daemon and the tests
  util-linux e2fsprogs xfsprogs
  # the lab: nodes with their own systemd, network namespaces, FUSE-backed disks
  systemd-container debootstrap zstd iproute2 fuse3 libfuse3-dev
  # the language-neutral external subsystem example
  socat
  # the systemd launcher of client services (systemd's D-Bus API); pip also
  # installs dbus-fast in the venv (setup.cfg install_requires)
  python3-dbus-fast
)

step() { echo "setup: $*" >&2; }
warn() { echo "setup: warning: $*" >&2; }
die() {  # die EXIT_CODE MESSAGE
  local code=$1; shift
  echo "setup.sh: $*" >&2
  exit "$code"
}

if [ "$(id -u)" -ne 0 ]; then
  die 2 "run as root (it installs apt packages and writes $VENV, $BIN_DIR, $UNIT_DIR, /etc): sudo $0"
fi
if ! command -v apt-get >/dev/null; then
  die 2 "no apt-get here: this script sets up a Debian 12 (or Ubuntu) host; elsewhere install the packages listed in $0 and run: python3 -m venv $VENV && $VENV/bin/pip install -e '$SRC[$EXTRAS]'"
fi

# --- 1. apt packages ---------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
step "updating the apt package lists (apt-get update)"
apt-get update -qq
step "installing apt packages: ${APT_PACKAGES[*]}"
apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null

# --- 2. the virtual environment ----------------------------------------------
if ! PY=$(command -v "$PYTHON"); then
  die 2 "PYTHON=$PYTHON: no such interpreter; install python3 (apt-get install python3) or set PYTHON=/path/to/python3.11"
fi
PY_VERSION=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  die 2 "$PY is Python $PY_VERSION; clusterfw needs 3.11 or newer (Debian 12's python3 is 3.11): set PYTHON=/path/to/python3.11"
fi
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  die 2 "$PY has no working venv/ensurepip module: apt-get install python3-venv (or set PYTHON= to an interpreter that has one)"
fi

venv_ok() {  # an environment of this interpreter's version, with pip and the system site packages
  [ -f "$VENV/pyvenv.cfg" ] && [ -x "$VENV/bin/python3" ] \
    && grep -Eq '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" \
    && [ "$("$VENV/bin/python3" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$PY_VERSION" ] \
    && "$VENV/bin/python3" -m pip --version >/dev/null 2>&1
}
if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
  die 2 "$VENV exists and is not a virtual environment (no pyvenv.cfg): move it away, then run $0 again"
fi
if venv_ok; then
  step "reusing the virtual environment $VENV (Python $PY_VERSION, system site packages)"
elif [ -e "$VENV" ]; then
  step "recreating the virtual environment $VENV with $PY (Python $PY_VERSION, system site packages): the old one is of another Python or broken"
  "$PY" -m venv --clear --system-site-packages "$VENV"
else
  step "creating the virtual environment $VENV with $PY (Python $PY_VERSION, system site packages)"
  "$PY" -m venv --system-site-packages "$VENV"
fi

step "installing clusterfw from $SRC into $VENV (pip, editable) with the $EXTRAS extras"
"$VENV/bin/python3" -m pip install -q --disable-pip-version-check -e "$SRC[$EXTRAS]"

# --- 3. commands in /usr/local/bin -------------------------------------------
# Every console script of the installed package (setup.cfg [options.entry_points]).
mapfile -t SCRIPTS < <("$VENV/bin/python3" -I -c '
from importlib.metadata import distribution
for ep in distribution("clusterfw").entry_points:
    if ep.group == "console_scripts":
        print(ep.name)')
if [ "${#SCRIPTS[@]}" -eq 0 ]; then
  die 1 "the clusterfw installed in $VENV declares no console script (setup.cfg [options.entry_points])"
fi
install -d -m 0755 "$BIN_DIR"
for name in "${SCRIPTS[@]}"; do
  target=$VENV/bin/$name
  link=$BIN_DIR/$name
  [ -x "$target" ] || die 1 "pip did not create $target (console script '$name')"
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then
    step "$link -> $target (already there)"
    continue
  fi
  if [ -e "$link" ] && [ ! -L "$link" ]; then
    # An older install's launcher (a pip script or the lab's) is replaced;
    # anything else is not ours to touch.
    if [ "$(head -c 2 "$link")" = '#!' ] && grep -qa clusterfw "$link"; then
      step "replacing $link (a launcher of an older clusterfw install)"
    else
      die 2 "$link exists and is not a clusterfw launcher: move it away, then run $0 again"
    fi
  fi
  step "linking $link -> $target"
  ln -sfn "$target" "$link"
done
step "installed: $("$BIN_DIR/clusterfw" --version)"

# --- 4. systemd units, udev rule, /etc/clusterfw ------------------------------
install -d -m 0755 "$UNIT_DIR"
for unit in systemd/*.service systemd/*.socket systemd/*.target systemd/*.timer systemd/*.path; do
  [ -f "$unit" ] || continue
  name=$(basename "$unit")
  step "installing the unit $UNIT_DIR/$name (not enabled, not started)"
  install -m 0644 "$unit" "$UNIT_DIR/$name"
  if [ -e "/etc/systemd/system/$name" ]; then
    warn "/etc/systemd/system/$name overrides $UNIT_DIR/$name: remove it to use the installed unit"
  fi
done

install -d -m 0755 "$CONF_DIR"
step "installing $CONF_DIR/clusterfw.conf.example"
install -m 0644 systemd/clusterfw.conf.example "$CONF_DIR/clusterfw.conf.example"
if [ -e "$CONF_DIR/clusterfw.conf" ]; then
  step "keeping the existing $CONF_DIR/clusterfw.conf (never overwritten)"
else
  # Not created from the example: the units start only once it exists
  # (ConditionPathExists=), so an unconfigured host never runs a daemon with
  # the example's disk and node name.
  step "no $CONF_DIR/clusterfw.conf yet: cp $CONF_DIR/clusterfw.conf.example $CONF_DIR/clusterfw.conf, then set CLUSTERFW_DISK and CLUSTERFW_NODE"
fi

RULE=udev/60-clusterfw.rules
rule_dst=$UDEV_DIR/$(basename "$RULE")
rule_rec=$RECORD_DIR/$(basename "$RULE")
rule_prog=$(sed -n 's/^IMPORT{program}="\([^ "]*\).*/\1/p' "$RULE" | head -n 1)
if [ ! -d /etc/udev ] && ! command -v udevadm >/dev/null; then
  step "skipping the udev rule: udev is not installed on this host"
elif grep -Eq '^[[:space:]]*[^#[:space:]].*SYSTEMD_WANTS' "$RULE"; then
  warn "not installing $RULE: its autostart line (SYSTEMD_WANTS) is not commented out in this checkout; comment it out and run $0 again"
elif [ -z "$rule_prog" ] || [ ! -x "$rule_prog" ]; then
  warn "not installing $RULE: the program it runs ('${rule_prog:-none}') is not an executable file"
elif [ -e "$rule_dst" ] && cmp -s "$RULE" "$rule_dst"; then
  step "$rule_dst is up to date"
elif [ -e "$rule_dst" ] && ! { [ -f "$rule_rec" ] && cmp -s "$rule_dst" "$rule_rec"; }; then
  step "keeping $rule_dst: it differs from $RULE and was changed by hand (compare: diff $RULE $rule_dst)"
else
  step "installing the udev rule $rule_dst (links /dev/disk/by-cluster/NAME; autostart line commented)"
  install -d -m 0755 "$UDEV_DIR" "$RECORD_DIR"
  install -m 0644 "$RULE" "$rule_dst"
  install -m 0644 "$RULE" "$rule_rec"
fi

if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  step "systemctl daemon-reload (systemd is PID 1)"
  systemctl daemon-reload
else
  step "not running systemctl daemon-reload: systemd is not PID 1 here"
fi

case "$SRC/" in
  /home/*|/root/*|/run/user/*)
    warn "the units run with ProtectHome=yes, so the daemon cannot read an editable install from $SRC: for clusterfw.service, use a checkout outside /home and /root (e.g. /usr/local/src/clusterfw) and run this script from there"
    ;;
esac
step "done: clusterfw is $BIN_DIR/clusterfw (venv $VENV, code in $SRC). Try: clusterfw --help"
