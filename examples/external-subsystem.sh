#!/usr/bin/env bash
# An external clusterfw subsystem in plain bash: registers a level over the
# node daemon's local socket and acknowledges every notification it gets.
# It shows that the protocol (newline-delimited JSON, docs/daemon.md) needs
# nothing but a Unix socket; socat carries the bytes.
#
# Usage: external-subsystem.sh [SOCKET] [LEVEL] [NAME]
#   SOCKET  the daemon's socket (default $CLUSTERFW_SOCKET or /run/clusterfw/clusterfw.sock)
#   LEVEL   the level to register (default 25: between VDM 20 and SFS 30)
#   NAME    the subsystem's name, 1..11 bytes (default "example")
#
# The daemon must still be waiting for it: start the daemon with
# --wait-for-subsystem NAME (a node's registrations are fixed once it has
# requested its join).  A real subsystem does its work where this one only
# prints the notification, and acks when the work is done.
#
# Exit codes: 0 the daemon closed the connection (it left or stopped),
# 1 the registration was refused, 2 bad usage or socat missing.
set -euo pipefail

SOCKET=${1:-${CLUSTERFW_SOCKET:-/run/clusterfw/clusterfw.sock}}
LEVEL=${2:-25}
NAME=${3:-example}

if ! command -v socat >/dev/null 2>&1; then
    echo "external-subsystem.sh: needs socat (Debian: apt-get install socat)" >&2
    exit 2
fi
if ! [[ $LEVEL =~ ^[0-9]+$ ]] || ! [[ $NAME =~ ^[A-Za-z0-9._-]{1,11}$ ]]; then
    echo "external-subsystem.sh: LEVEL must be a number and NAME 1..11 characters of A-Z a-z 0-9 . _ -" >&2
    exit 2
fi

coproc DAEMON { exec socat - "UNIX-CONNECT:$SOCKET"; }
exec {to_daemon}>&"${DAEMON[1]}" {from_daemon}<&"${DAEMON[0]}"

send() { printf '%s\n' "$1" >&"$to_daemon"; }

send "{\"v\":1,\"op\":\"register\",\"level\":$LEVEL,\"name\":\"$NAME\",\"barriers\":[1,1,1]}"

while IFS= read -r line <&"$from_daemon"; do
    case $line in
        *'"op":"notify"'*)
            if [[ $line =~ \"batch\":([0-9]+) ]]; then
                batch=${BASH_REMATCH[1]}
                echo "$NAME: notified: $line"
                # ... the subsystem's work for this transition goes here ...
                send "{\"v\":1,\"op\":\"ack\",\"batch\":$batch}"
            fi
            ;;
        *'"ok":false'*'"op":"register"'* | *'"op":"register"'*'"ok":false'*)
            echo "$NAME: registration refused: $line" >&2
            exit 1
            ;;
        *'"ok":false'*)
            echo "$NAME: the daemon refused a message: $line" >&2
            ;;
        *'"op":"registered"'*)
            echo "$NAME: registered at level $LEVEL: $line"
            ;;
        *'"op":"acked"'*)
            echo "$NAME: $line"
            ;;
    esac
done
echo "$NAME: the daemon closed the connection"
exit 0
