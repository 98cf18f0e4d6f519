#!/usr/bin/env bash
# The layers as the build enforces them (CMakeLists.txt, MAILROOM_LAYERS): a source of one layer
# is compiled against a folder holding only its own layer's headers and those below it.
#   1. Every header of a layer compiles on its own against its layer's folder.
#   2. A file of a layer that includes a header of any higher layer does not compile, and the
#      compiler says that header is not found (not some other error).
#   3. No source reaches around the folders with a relative include ("../x.hpp", "layer/x.hpp").
#   4. The layers below mbox (core, queue, dispatch, env) name no agent or session in code: they
#      offer extension points (running kinds, env extensions) that those layers fill in.
#      Comments and string literals are not code; the one exception is listed below.
#   5. A user of the installed headers cannot reach behind a handle: mbox, binder, dispatcher,
#      coop, coop_handle and environment have no public impl() or core() (the library reaches
#      them through internal::handle_access, an internal header).
#   The net layer is a library of its own above named (mailroom::net); its headers also see
#   msgpack-cxx's, with the definitions the build gives them (LAYERING_CXXFLAGS).
# Usage: layering_test.sh <compiler> <source dir> <build dir> <layer>...
set -euo pipefail
cxx=$1 src=$2 build=$3
shift 3
layers=("$@")
read -r -a extra <<< "${LAYERING_CXXFLAGS:-}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

headers_of() {  # the public and internal headers of a layer, as they are included
  local l=$1
  { (cd "$src/include/mailroom/$l" 2>/dev/null && find . -name '*.hpp') || true
    (cd "$src/src/$l" 2>/dev/null && find . -name '*.hpp') || true; } | sed "s|^\./|mailroom/$l/|" | sort
}

# 1. Each header alone, LAYERING_JOBS compiles at a time (default 2): a file per check, and a
#    .failed file beside it for each that did not compile, read once all are done.
own_check() {  # <k> <layer> <view> <header>
  printf '#include <%s>\nint main() {}\n' "$4" > "$scratch/own.$1.cpp"
  if ! "$cxx" -std=c++20 -fsyntax-only "${extra[@]}" -I"$3" "$scratch/own.$1.cpp" 2> "$scratch/own.$1.err"; then
    printf '%s\n%s\n' "$2" "$4" > "$scratch/own.$1.failed"
  fi
}
own_jobs=${LAYERING_JOBS:-2}
k=0
for low in "${layers[@]}"; do
  view=$build/layers/$low
  [[ -d $view ]] || continue
  while read -r h; do
    k=$((k + 1))
    own_check "$k" "$low" "$view" "$h" &
    while (($(jobs -rp | wc -l) >= own_jobs)); do wait -n || true; done
  done < <(headers_of "$low")
done
wait
for f in "$scratch"/own.*.failed; do
  [[ -e $f ]] || continue
  { read -r low; read -r h; } < "$f"
  fail "layer '$low': <$h> does not compile on its own against its layer's headers"
  head -5 "${f%.failed}.err"
done

for ((i = 0; i < ${#layers[@]}; i++)); do
  low=${layers[$i]}
  view=$build/layers/$low
  [[ -d $view ]] || { fail "no folder of headers for layer '$low' ($view)"; continue; }
  # 2. every higher layer's headers are out of reach
  for ((j = i + 1; j < ${#layers[@]}; j++)); do
    high=${layers[$j]}
    h=$(headers_of "$high" | head -n 1)
    [[ -n $h ]] || continue
    printf '#include <%s>\nint main() {}\n' "$h" > "$scratch/up.cpp"
    # (The preprocessor alone finds, or misses, the header: no need to compile.)
    if "$cxx" -std=c++20 -E "${extra[@]}" -I"$view" "$scratch/up.cpp" > /dev/null 2> "$scratch/up.err"; then
      fail "layer '$low' can include <$h> of the higher layer '$high'"
    elif ! grep -q "$h: No such file" "$scratch/up.err"; then
      fail "layer '$low' including <$h>: refused, but not for want of the header:"
      head -5 "$scratch/up.err"
    fi
  done
done

# 3. relative includes that would bypass the folders
if grep -rnE '#include "(\.\./|[a-z_]+/)' "$src/src" "$src/include"; then
  fail "a source includes a header by a relative path (use <mailroom/<layer>/<header>.hpp>)"
fi

# 4. no agent or session identifiers below the mbox layer
# thread_pool's FIFO policy (fifo::cooperation, fifo::agent) names its unit in the words its
# users bind with: a public enumerator that the pool never interprets beyond "one queue each".
allowed='include/mailroom/dispatch/thread_pool.hpp: agent'
for l in "${layers[@]}"; do
  [[ $l == mbox ]] && break
  while read -r f; do
    # Comments become blank lines (block comments keep their line breaks), strings empty.
    perl -0777 -ne 's{/\*.*?\*/}{ (my $c = $&) =~ s/[^\n]//g; $c }gse; s{//[^\n]*}{}g;
        s{"(?:\\.|[^"\\\n])*"}{""}g; my $n = 0;
        for my $line (split /\n/, $_, -1) { $n++; print "$n: $1\n" while $line =~ /\b(\w*(?:agent|session)\w*)\b/gi }' "$src/$f" |
      while read -r n word; do
        [[ "$f: $word" == "$allowed" ]] && continue
        echo "$f:$n${word:+ }$word"
      done
  done < <(cd "$src" && find "include/mailroom/$l" "src/$l" -name '*.hpp' -o -name '*.cpp' 2>/dev/null | sort) > "$scratch/names"
  if [[ -s $scratch/names ]]; then
    fail "layer '$l' names an upper layer's concept (agent, session) in code:"
    cat "$scratch/names"
  fi
done

# 5. no public way behind a handle, as a user compiles against the public headers
for expr in 'mailroom::mbox{}.impl()' 'mailroom::binder{}.impl()' 'mailroom::dispatcher{}.impl()' \
            'mailroom::coop_handle{}.impl()' 'std::declval<mailroom::coop&>().impl()' \
            'std::declval<mailroom::environment&>().core()'; do
  printf '#include <mailroom/mailroom.hpp>\n#include <utility>\nusing probe = decltype(%s);\nint main() {}\n' "$expr" \
    > "$scratch/handle.cpp"
  if "$cxx" -std=c++20 -fsyntax-only -I"$src/include" -I"$build/include" "$scratch/handle.cpp" 2> "$scratch/handle.err"; then
    fail "a user can call $expr"
  elif ! grep -qE "has no member named|no member named" "$scratch/handle.err"; then
    fail "$expr: refused, but not for want of the member:"
    head -5 "$scratch/handle.err"
  fi
done

if ((failures)); then
  echo "$failures layering check(s) failed"
  exit 1
fi
echo "layering holds for: ${layers[*]}"
