#!/usr/bin/env bash
# Installs mailroom from the build tree <build> into a scratch prefix, then builds and runs a
# consumer three ways: find_package, pkg-config, and add_subdirectory of the source tree (and,
# when the net layer is built, a consumer of mailroom::net the same three ways: pkg-config's
# package is mailroom-net).
set -euo pipefail
src=$1 build=$2 scratch=$3
rm -rf "$scratch" && mkdir -p "$scratch"
cmake --install "$build" --prefix "$scratch/prefix" >/dev/null

cmake -S "$src/tests/install/consumer" -B "$scratch/find" -DCMAKE_PREFIX_PATH="$scratch/prefix" >/dev/null
cmake --build "$scratch/find" >/dev/null
"$scratch/find/consumer"
if [[ -x "$scratch/find/net_consumer" ]]; then "$scratch/find/net_consumer"; fi

libdir=$(ls -d "$scratch"/prefix/lib*/pkgconfig | head -n 1)
flags=$(PKG_CONFIG_PATH="$libdir" pkg-config --cflags --libs mailroom)
# shellcheck disable=SC2086
c++ "$src/tests/install/consumer/main.cpp" -o "$scratch/pc_consumer" $flags
"$scratch/pc_consumer"
if [[ -f "$libdir/mailroom-net.pc" ]]; then
  net_flags=$(PKG_CONFIG_PATH="$libdir" pkg-config --cflags --libs mailroom-net)
  # shellcheck disable=SC2086
  c++ "$src/tests/install/consumer/net_main.cpp" -o "$scratch/pc_net_consumer" $net_flags
  "$scratch/pc_net_consumer"
elif [[ -x "$scratch/find/net_consumer" ]]; then
  echo "the net layer is installed but mailroom-net.pc is not" >&2
  exit 1
fi

cmake -S "$src/tests/install/consumer" -B "$scratch/sub" -DMAILROOM_SOURCE_DIR="$src" >/dev/null
cmake --build "$scratch/sub" -j 2 >/dev/null
"$scratch/sub/consumer"
if [[ -x "$scratch/sub/net_consumer" ]]; then "$scratch/sub/net_consumer"; fi
