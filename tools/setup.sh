#!/usr/bin/env bash
# The two commands of the README.
#   bash tools/setup.sh demo   installs the missing Debian packages, builds, runs `mailroom demo`
#   bash tools/setup.sh test   installs the missing Debian packages, builds and runs the whole test
#                              suite three ways: normal, ThreadSanitizer, AddressSanitizer+UBSan+LSan,
#                              and `mailroom bench --quick` once (result checks only, no figures judged)
# Options through the environment: MAILROOM_JOBS (default 2), MAILROOM_TEST_BUILDS (default
# "release tsan asan"), MAILROOM_BUILD_ROOT (default ./build).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
jobs=${MAILROOM_JOBS:-2}
root=${MAILROOM_BUILD_ROOT:-$here/build}

# Debian packages the build needs; only the missing ones are installed.
# libzmq3-dev, cppzmq-dev and libmsgpack-cxx-dev build the net layer (mailroom::net).
# libcaf-dev, libconcurrentqueue-dev and libasio-dev are only for the comparison benchmarks.
packages=(g++ cmake make pkg-config libgtest-dev libgmock-dev libbenchmark-dev liburcu-dev libunwind-dev
          libzmq3-dev cppzmq-dev libmsgpack-cxx-dev
          libcaf-dev libconcurrentqueue-dev libasio-dev)

install_missing() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

# configure_and_build <dir> <sanitizer: '' | thread | address> <build type> [extra cmake args...]
configure_and_build() {
  local dir=$1 san=$2 type=$3
  shift 3
  cmake -S "$here" -B "$dir" -DCMAKE_BUILD_TYPE="$type" -DMAILROOM_SANITIZE="$san" "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
}

run_tests() {
  local name=$1 dir=$2
  echo "== tests: $name"
  local start=$SECONDS
  ctest --test-dir "$dir" -j "$jobs" --output-on-failure --timeout 600
  echo "== tests: $name passed in $((SECONDS - start)) s"
}

mode=${1:-}
case "$mode" in
  demo)
    install_missing
    configure_and_build "$root/release" "" Release
    shift
    "$root/release/tools/mailroom/mailroom" demo "$@"
    ;;
  test)
    install_missing
    builds=${MAILROOM_TEST_BUILDS:-release tsan asan}
    export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
    export ASAN_OPTIONS="detect_leaks=1 abort_on_error=1 ${ASAN_OPTIONS:-}"
    export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1 ${UBSAN_OPTIONS:-}"
    for b in $builds; do
      start=$SECONDS
      case "$b" in
        release) configure_and_build "$root/release" "" Release ;;
        # The sanitizer builds at -O1 with line tables only (-g1): the sanitizers' own advice,
        # stack traces still name files and lines, and they compile in about half the time of
        # -O2 -g (UBSan's checks are most of an -O2 build's cost).
        tsan) configure_and_build "$root/tsan" thread RelWithDebInfo -DMAILROOM_BUILD_BENCH=OFF \
                -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" ;;
        asan) configure_and_build "$root/asan" address RelWithDebInfo -DMAILROOM_BUILD_BENCH=OFF \
                -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" ;;
        *) echo "unknown build '$b' (release, tsan, asan)" >&2; exit 2 ;;
      esac
      echo "== build: $b took $((SECONDS - start)) s"
      run_tests "$b" "$root/$b"
      if [ "$b" = release ]; then
        # The benchmarks keep building and their own result checks keep passing; figures taken
        # on a CI machine are not judged.
        echo "== bench: mailroom bench --quick"
        start=$SECONDS
        "$root/release/tools/mailroom/mailroom" bench --quick --bench-dir "$root/release/bench" \
          --json "$root/release/bench-quick.json" --chart "$root/release/bench-quick.svg"
        echo "== bench: passed in $((SECONDS - start)) s"
      fi
    done
    echo "== all test builds passed: $builds"
    ;;
  *)
    echo "usage: bash tools/setup.sh demo|test" >&2
    exit 2
    ;;
esac
