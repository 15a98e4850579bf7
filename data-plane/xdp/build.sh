#!/bin/sh
# Rebuilds rauta_xdp.o from rauta_xdp.c (Debian: apt-get install clang libbpf-dev).
# The object is committed so that a clone builds with cargo alone; the data-plane test
# `xdp_object_is_fresh` rebuilds it with these same flags and fails when it differs.
# -g keeps BTF (the loader needs it for the maps); the path of the source is made relative
# so the debug info does not depend on where the repository is.
set -eu
cd "$(dirname "$0")"
OUT="${1:-rauta_xdp.o}"
CLANG="${CLANG:-clang}"
ARCH_INCLUDE="/usr/include/$(uname -m)-linux-gnu"
exec "$CLANG" -O2 -g -target bpf -mcpu=v3 \
	-fdebug-prefix-map="$(pwd)=." -I"$ARCH_INCLUDE" \
	-Wall -Werror \
	-c rauta_xdp.c -o "$OUT"
