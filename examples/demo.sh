#!/usr/bin/env bash
# The judge demo: `sbx judge` on every solution of examples/sum (a correct one in each shipped language, and
# one for each way to fail), then a problem package with an output validator and an interactive one, then
# the service: a solution sent to sbx serve with sbx submit.
# Exits non-zero only if the correct solutions do not pass.
set -u
here=$(cd "$(dirname "$0")" && pwd)
sbx=${SBX:-sbx}
status=0
for solution in "$here"/sum/solutions/*; do
    name=$(basename "$solution")
    echo "== $name"
    "$sbx" judge "$solution" --tests "$here/sum/tests" --time 1 --memory 256M 2>/dev/null
    verdict=$?
    case "$name" in ok.*) [ "$verdict" = 0 ] || status=1 ;; esac
done
for problem in average guess; do
    for solution in "$here/problems/$problem/solutions"/*; do
        name=$(basename "$solution")
        echo "== $problem: $name"
        "$sbx" judge "$solution" --problem "$here/problems/$problem" 2>/dev/null
        verdict=$?
        case "$name" in ok.*) [ "$verdict" = 0 ] || status=1 ;; esac
    done
done
# the service: sbx serve on loopback, a solution sent to it with sbx submit, its verdict table
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$sbx" serve --listen "127.0.0.1:$port" --pool 1 >/dev/null 2>&1 &
server=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.2
done
echo "== sbx submit to sbx serve on 127.0.0.1:$port: ok.cpp"
"$sbx" submit --server "http://127.0.0.1:$port" "$here/sum/solutions/ok.cpp" --tests "$here/sum/tests" --wait \
    || status=1
kill -TERM "$server"
wait "$server"
exit "$status"
