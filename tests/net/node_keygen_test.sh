#!/usr/bin/env bash
# `mailroom node keygen`: writes NAME.key (0600) and NAME.pub (0644), each one Z85 key line under
# a comment header; refuses to overwrite without --force; bad arguments exit 2; `mailroom node`
# without --name says it is needed and exits 2; --help describes the runner and keygen; SIGHUP
# makes a running node read its allow-list directory again.
# Usage: node_keygen_test.sh <path of the mailroom tool> <scratch directory>
set -u
tool=$1
scratch=$2
rm -rf "$scratch"
mkdir -p "$scratch"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

expect_exit() {  # expect_exit CODE DESCRIPTION -- command...
    local want=$1 what=$2
    shift 3
    "$@" >"$scratch/out" 2>"$scratch/err"
    local got=$?
    [ "$got" -eq "$want" ] || fail "$what: exit $got, expected $want (stderr: $(cat "$scratch/err"))"
}

key_line() { grep -v '^#' "$1" | grep -v '^[[:space:]]*$'; }

expect_exit 2 "node without --name" -- "$tool" node
grep -q -- "--name NAME is needed" "$scratch/err" || fail "node without --name does not say --name is needed"
expect_exit 2 "node with an unknown service" -- "$tool" node --name a --serve bogus
expect_exit 0 "node --help" -- "$tool" node --help
grep -q "keygen" "$scratch/out" || fail "node --help does not describe keygen"
grep -q -- "--serve" "$scratch/out" || fail "node --help does not describe the runner"
expect_exit 2 "keygen without --name" -- "$tool" node keygen --out "$scratch/keys"
expect_exit 2 "keygen without --out" -- "$tool" node keygen --name alpha
expect_exit 2 "keygen with an unknown flag" -- "$tool" node keygen --out "$scratch/keys" --name alpha --bogus
expect_exit 2 "keygen with a bad node name" -- "$tool" node keygen --out "$scratch/keys" --name a/b
[ ! -e "$scratch/keys/a/b.key" ] || fail "a bad name wrote a file"

expect_exit 0 "keygen" -- "$tool" node keygen --out "$scratch/keys" --name alpha
secret="$scratch/keys/alpha.key"
public="$scratch/keys/alpha.pub"
[ -f "$secret" ] || fail "no $secret"
[ -f "$public" ] || fail "no $public"
[ "$(stat -c %a "$secret")" = 600 ] || fail "secret key mode $(stat -c %a "$secret"), expected 600"
[ "$(stat -c %a "$public")" = 644 ] || fail "public key mode $(stat -c %a "$public"), expected 644"
[ "$(stat -c %a "$scratch/keys")" = 700 ] || fail "made directory mode $(stat -c %a "$scratch/keys"), expected 700"
for f in "$secret" "$public"; do
    [ "$(key_line "$f" | wc -l)" -eq 1 ] || fail "$f: not exactly one key line"
    key_line "$f" | grep -Eq '^[]0-9a-zA-Z.:+=^!/*?&<>()[{}@%$#-]{40}$' || fail "$f: the key line is not 40 Z85 characters"
    [ "$(key_line "$f" | tr -d '\n' | wc -c)" -eq 40 ] || fail "$f: the key is not 40 characters"
done
head -1 "$secret" | grep -q "^# mailroom curve secret key$" || fail "the secret file's header is not the secret marker"
head -1 "$public" | grep -q "^# mailroom curve public key$" || fail "the public file's header is not the public marker"
grep -qF "public key of node 'alpha': $(key_line "$public")" "$scratch/out" || fail "the printed public key is not the file's"
[ "$(key_line "$secret")" != "$(key_line "$public")" ] || fail "the secret and public keys are the same"

before=$(cat "$secret" "$public" | md5sum)
expect_exit 1 "keygen over existing files" -- "$tool" node keygen --out "$scratch/keys" --name alpha
grep -q "exists" "$scratch/err" || fail "refusing to overwrite does not say the file exists"
[ "$(cat "$secret" "$public" | md5sum)" = "$before" ] || fail "a refused keygen changed the files"
expect_exit 0 "keygen --force" -- "$tool" node keygen --out "$scratch/keys" --name alpha --force
[ "$(cat "$secret" "$public" | md5sum)" != "$before" ] || fail "keygen --force did not replace the files"
[ "$(stat -c %a "$secret")" = 600 ] || fail "replaced secret key mode $(stat -c %a "$secret")"

# SIGHUP: a running `mailroom node` reads its --allow-dir again and says what changed.
wait_for_line() {  # wait_for_line FILE TEXT SECONDS
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -qF -- "$2" "$1" && return 0
        sleep 0.1
    done
    return 1
}
stop_node() {  # stop_node PID: SIGTERM, up to 20 s to exit, then SIGKILL; true when it exited 0
    local i
    kill -TERM "$1" 2>/dev/null
    for ((i = 0; i < 200; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null
    wait "$1"
}
mkdir -p "$scratch/allow"
"$tool" node keygen --out "$scratch/server" --name srv >/dev/null
"$tool" node --name srv --secret-key "$scratch/server/srv.key" --allow-dir "$scratch/allow" \
    --listen tcp://127.0.0.1:0 --for 60 >"$scratch/node.out" 2>&1 &
node_pid=$!
if wait_for_line "$scratch/node.out" "READY " 20; then
    "$tool" node keygen --out "$scratch/allow" --name beta >/dev/null
    kill -HUP "$node_pid"
    wait_for_line "$scratch/node.out" "allow-list reloaded: added beta changed - removed -" 20 ||
        fail "SIGHUP: no 'allow-list reloaded: added beta' line (output: $(cat "$scratch/node.out"))"
    rm "$scratch/allow/beta.pub"
    kill -HUP "$node_pid"
    wait_for_line "$scratch/node.out" "allow-list reloaded: added - changed - removed beta" 20 ||
        fail "SIGHUP: no 'removed beta' line (output: $(cat "$scratch/node.out"))"
    echo "broken" >"$scratch/allow/gamma.pub"
    kill -HUP "$node_pid"
    wait_for_line "$scratch/node.out" "allow-list not reloaded: " 20 ||
        fail "SIGHUP with a broken file: no 'not reloaded' line (output: $(cat "$scratch/node.out"))"
    kill -0 "$node_pid" 2>/dev/null || fail "the node did not carry on after a failed reload"
else
    fail "mailroom node with --allow-dir did not say READY (output: $(cat "$scratch/node.out"))"
fi
stop_node "$node_pid" || fail "the node did not exit 0 on SIGTERM after the reloads"

# --watch-allow-dir: the node reads the directory again by itself when a file appears.
mkdir -p "$scratch/watched"
"$tool" node --name srv --secret-key "$scratch/server/srv.key" --allow-dir "$scratch/watched" --watch-allow-dir \
    --listen tcp://127.0.0.1:0 --for 60 >"$scratch/watch.out" 2>&1 &
node_pid=$!
if wait_for_line "$scratch/watch.out" "READY " 20; then
    "$tool" node keygen --out "$scratch/watched" --name delta >/dev/null
    wait_for_line "$scratch/watch.out" "allow-list reloaded after a change in '$scratch/watched': added delta" 20 ||
        fail "--watch-allow-dir: no 'reloaded after a change ... added delta' line (output: $(cat "$scratch/watch.out"))"
else
    fail "mailroom node with --watch-allow-dir did not say READY (output: $(cat "$scratch/watch.out"))"
fi
stop_node "$node_pid" || fail "the watching node did not exit 0 on SIGTERM"
expect_exit 2 "--watch-allow-dir without --allow-dir" -- "$tool" node --name srv --secret-key \
    "$scratch/server/srv.key" --watch-allow-dir --listen tcp://127.0.0.1:0

if [ "$fails" -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
rm -rf "$scratch"
echo "node keygen: all checks passed"
