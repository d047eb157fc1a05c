#!/usr/bin/env bash
# A private MariaDB server for the database tests (tests/test_db.py): not the system service.
#
#   MARIADB_ENV=$(.ci/mariadb.sh) && eval "$MARIADB_ENV"     # start (idempotent), export the info
#   .ci/mariadb.sh stop                                         # shut it down
#
# Installs Debian's mariadb-server if missing (without starting the system service), initialises a
# data directory in $TWINKLES_MARIADB_DIR (default /tmp/twinkles-mariadb-$UID, mode 700), starts
# mariadbd in the background on a unix socket there (no TCP), and creates the database and user
# `twinkles_test`. The connection info (socket, database, user, password) goes to the option file
# $DIR/client.cnf (mode 600, [client] section); stdout carries only the `export` lines that name it,
# every progress message goes to stderr, and the password is never printed. The server accepts LOAD DATA
# LOCAL INFILE (the bulk path of store/db.py's ingest); its InnoDB buffer pool is
# $TWINKLES_MARIADB_BUFFER_POOL (default 64M; `twinkles-hpc bench ingest` at scale may want more), applied
# when the server starts.
set -euo pipefail

DIR=${TWINKLES_MARIADB_DIR:-/tmp/twinkles-mariadb-$(id -u)}
SOCK=$DIR/mysqld.sock
CNF=$DIR/client.cnf
DB=twinkles_test
BUFFER_POOL=${TWINKLES_MARIADB_BUFFER_POOL:-64M}
ME=$(id -un)
say() { echo "[mariadb.sh] $*" >&2; }
admin() { mariadb-admin --no-defaults --socket="$SOCK" --user="$ME" "$@"; }
alive() { admin --connect-timeout=2 ping >/dev/null 2>&1; }

if [[ ${1:-} == stop ]]; then
    if alive; then say "stopping the server on $SOCK"; admin shutdown; else say "no server on $SOCK"; fi
    exit 0
fi

if ! command -v mariadbd >/dev/null && [[ ! -x /usr/sbin/mariadbd ]]; then
    SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
    say "installing mariadb-server with apt-get (the system service is not started)"
    # policy-rc.d exit code 101 tells the package scripts not to start services
    POLICY=/usr/sbin/policy-rc.d
    ADDED_POLICY=
    if [[ ! -e $POLICY ]]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null && $SUDO chmod 755 "$POLICY"
        ADDED_POLICY=1
    fi
    trap '[[ -n $ADDED_POLICY ]] && $SUDO rm -f "$POLICY"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { $SUDO apt-get install -y -q --no-install-recommends mariadb-server mariadb-client >&2; }
    apt_install || { say "apt-get update"; $SUDO apt-get update -q >&2; apt_install; }
fi
export PATH=$PATH:/usr/sbin

mkdir -p "$DIR" && chmod 700 "$DIR"
[[ -O $DIR ]] || { say "error: $DIR is not owned by $ME"; exit 1; }

if [[ ! -d $DIR/data/mysql ]]; then
    say "initialising the data directory $DIR/data"
    rm -rf "$DIR/data"
    mariadb-install-db --no-defaults --user="$ME" --datadir="$DIR/data" \
        --auth-root-authentication-method=socket --skip-test-db >"$DIR/install.log" 2>&1 \
        || { cat "$DIR/install.log" >&2; exit 1; }
fi

if alive; then
    say "server already running on $SOCK"
else
    say "starting mariadbd on $SOCK (log: $DIR/error.log)"
    rm -f "$SOCK" "$DIR/mysqld.pid"
    # setsid + closed descriptors: the server outlives this script and holds no pipe of the caller
    setsid mariadbd --no-defaults --user="$ME" --datadir="$DIR/data" --socket="$SOCK" \
        --pid-file="$DIR/mysqld.pid" --log-error="$DIR/error.log" --skip-networking \
        --character-set-server=utf8mb4 --innodb-buffer-pool-size="$BUFFER_POOL" --local-infile=1 \
        --innodb-flush-log-at-trx-commit=2 </dev/null >/dev/null 2>&1 &
    for _ in $(seq 120); do alive && break; sleep 0.25; done
    alive || { say "error: the server did not start"; tail -20 "$DIR/error.log" >&2; exit 1; }
fi

# keep the password of an earlier call so that a rerun changes nothing
PASSWORD=$(sed -n 's/^password *= *//p' "$CNF" 2>/dev/null || true)
[[ -n $PASSWORD ]] || PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
say "creating database $DB and user $DB@localhost (if missing)"
mariadb --no-defaults --socket="$SOCK" --user="$ME" <<SQL
CREATE DATABASE IF NOT EXISTS $DB;
CREATE USER IF NOT EXISTS '$DB'@'localhost' IDENTIFIED BY '$PASSWORD';
ALTER USER '$DB'@'localhost' IDENTIFIED BY '$PASSWORD';
GRANT ALL PRIVILEGES ON $DB.* TO '$DB'@'localhost';
SQL
umask 077
printf '[client]\nuser = %s\npassword = %s\nsocket = %s\ndatabase = %s\n' \
    "$DB" "$PASSWORD" "$SOCK" "$DB" >"$CNF.tmp" && mv "$CNF.tmp" "$CNF"
say "connection info in $CNF; server version $(admin version 2>/dev/null | sed -n 's/^Server version[[:space:]]*//p')"
echo "export TWINKLES_TEST_DB_OPTION_FILE=$CNF"
echo "export TWINKLES_TEST_DB_REQUIRED=1"
