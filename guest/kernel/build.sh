#!/bin/bash
# Builds twinbox's guest kernel from Debian's linux-source-6.12 and caches it by config hash.
#
#   guest/kernel/build.sh [--cache DIR] [--jobs N]
#
# The kernel is `make tinyconfig` + twinbox.config + `make olddefconfig`; every option of the
# fragment must survive or the build fails. The result lands in DIR/<hash>/ (vmlinux, bzImage,
# kernel.release, config), where <hash> covers the fragment, this script, the kernel source
# version and the compiler; DIR/current links to the latest build. A build whose hash is
# already cached returns at once. stdout gets exactly one line: the build's directory.
# Progress and errors go to stderr.
#
# DIR defaults to $CARGO_TARGET_DIR/guest-kernel (or target/guest-kernel in the repository).
# KERNEL_TARBALL overrides the source tarball (default /usr/src/linux-source-6.12.tar.xz).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
fragment=$here/twinbox.config
default_tarball=/usr/src/linux-source-6.12.tar.xz
tarball=${KERNEL_TARBALL:-$default_tarball}
cache=${CARGO_TARGET_DIR:-$repo/target}/guest-kernel
jobs=$(nproc)

die() {
	echo "guest kernel: error: $*" >&2
	exit 1
}

while [ $# -gt 0 ]; do
	case $1 in
	--cache) cache=${2:?--cache needs a directory}; shift 2 ;;
	--jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done

# Every tool the kernel build needs, with the Debian package that provides it.
missing=()
for need in make:build-essential gcc:build-essential flex:flex bison:bison bc:bc \
	lz4:lz4 xz:xz-utils perl:perl; do
	command -v "${need%%:*}" >/dev/null || missing+=("${need#*:}")
done
[ -f /usr/include/gelf.h ] || missing+=(libelf-dev)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ ${#missing[@]} -eq 0 ] || die "missing build tools; install them with: apt-get install ${missing[*]}"
[ -f "$tarball" ] || die "kernel source $tarball not found; install it with: apt-get install linux-source-6.12 (or set KERNEL_TARBALL)"

# The kernel source's identity: the Debian package version for the packaged tarball (cheap),
# otherwise the tarball's content hash.
if [ "$tarball" = "$default_tarball" ] &&
	src_version=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null) && [ -n "$src_version" ]; then
	source_id="debian linux-source-6.12 $src_version"
else
	source_id="tarball sha256 $(sha256sum <"$tarball" | cut -d' ' -f1)"
fi
compiler_id=$(gcc --version | head -n1)
key=$({
	echo "$source_id"
	echo "$compiler_id"
	cat "$fragment" "${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-16)
out=$cache/$key

# Point DIR/current at this build (atomically) and report it.
publish() {
	ln -sfn "$key" "$cache/.current.tmp"
	mv -T "$cache/.current.tmp" "$cache/current"
	echo "guest kernel $(cat "$out/kernel.release") $1: $out" >&2
	echo "$out"
}

[ -f "$out/kernel.release" ] && { publish cached; exit 0; }

mkdir -p "$cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
	echo "guest kernel: waiting for another build of it to finish" >&2
	flock 9
fi
# Another process may have built it while we waited.
[ -f "$out/kernel.release" ] && { publish cached; exit 0; }

started=$SECONDS
log=$cache/build.log
: >"$log"
if [ -t 2 ]; then tty=1 interval=1; else tty=0 interval=30; fi

# One status line: rewritten in place on a terminal, a line per stage (and every 30 s) in logs.
status() {
	if [ "$tty" = 1 ]; then
		printf '\r\033[Kguest kernel [%3ds] %s' $((SECONDS - started)) "$1" >&2
	else
		printf 'guest kernel [%3ds] %s\n' $((SECONDS - started)) "$1" >&2
	fi
}
end_status() { [ "$tty" = 0 ] || printf '\r\033[K' >&2; }
fail() {
	end_status
	echo "guest kernel: error: $1; last lines of $log:" >&2
	tail -n 30 "$log" >&2
	exit 1
}

src=$cache/src-$(echo "$source_id" | sha256sum | cut -c1-12)
obj=$cache/build
if [ ! -f "$src/.extracted" ]; then
	# A new source version: objects built from another tree are useless.
	rm -rf "$cache"/src-* "$obj"
	status "extracting $(basename "$tarball")"
	mkdir -p "$src.tmp"
	tar -xf "$tarball" -C "$src.tmp" --strip-components=1 >>"$log" 2>&1 || fail "cannot extract $tarball"
	touch "$src.tmp/.extracted"
	mv -T "$src.tmp" "$src"
fi

kmake() { make -C "$src" O="$obj" ARCH=x86_64 "$@"; }

status "configuring (tinyconfig + $(basename "$fragment"))"
mkdir -p "$obj"
{
	kmake tinyconfig &&
		"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment" &&
		kmake olddefconfig
} >>"$log" 2>&1 || fail "configuration failed"

# Every line of the fragment must have survived olddefconfig.
if ! problems=$("$here/check-config.sh" "$fragment" "$obj/.config" 2>&1); then
	end_status
	echo "guest kernel: error: $problems" >&2
	exit 1
fi

status "compiling with $jobs jobs"
last_print=$SECONDS
steps=0
# Kbuild prints one line per step ("  CC      fs/ext4/inode.o"); show the latest one.
if ! kmake -j"$jobs" vmlinux bzImage 2>&1 | tee -a "$log" | {
	while IFS= read -r line; do
		steps=$((steps + 1))
		if [ $((SECONDS - last_print)) -ge "$interval" ]; then
			last_print=$SECONDS
			status "compiling: $steps steps, ${line#"${line%%[! ]*}"}"
		fi
	done
}; then
	fail "compilation failed"
fi

rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cp "$obj/vmlinux" "$obj/arch/x86/boot/bzImage" "$out.tmp/"
cp "$obj/.config" "$out.tmp/config"
cp "$obj/include/config/kernel.release" "$out.tmp/kernel.release"
mv -T "$out.tmp" "$out"
end_status
publish "built in $((SECONDS - started)) s"
