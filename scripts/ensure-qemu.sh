#!/usr/bin/env bash
# Install Debian's QEMU 7.2 (qemu-utils, qemu-system-x86), Graphviz and gdb when
# they are missing and we are root. Elsewhere say what is missing and go on:
# the QEMU tests then skip with that reason (and fail under CI=true).
set -u
need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v qemu-storage-daemon >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v dot >/dev/null 2>&1 || need+=(graphviz)
command -v gdb >/dev/null 2>&1 || need+=(gdb)         # backtraces of a crashed QEMU
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${need[*]} (not root or no apt-get): QEMU tests will be skipped" >&2
  exit 0
fi
echo "installing ${need[*]} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
