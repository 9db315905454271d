#!/bin/sh
# Builds paq8px (v216, the benchmark's strongest classical peer) from its repository and installs it as
# ~/.local/bin/paq8px, where benchmarks/run.py finds it on PATH. Needs git, cmake and a C++17 compiler; a few minutes
# on 2 cores. Never part of CI.
set -eu
COMMIT=29237fb44cb1995690e3eb72c6c3b1e4aede5791  # hxim/paq8px master as of 2026-12 (v216)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone --quiet https://github.com/hxim/paq8px "$WORK/src"
git -C "$WORK/src" checkout --quiet "$COMMIT"
cmake -S "$WORK/src" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$WORK/build" -j "$(nproc)" > /dev/null
mkdir -p "$HOME/.local/bin"
cp "$WORK/build/paq8px" "$HOME/.local/bin/paq8px"
"$HOME/.local/bin/paq8px" 2>&1 | head -1
