#!/bin/bash
# Checks that every option of a config fragment survived in a kernel .config.
#
#   guest/kernel/check-config.sh FRAGMENT CONFIG
#
# "CONFIG_X=value" lines must appear verbatim in CONFIG; "# CONFIG_X is not set" lines must
# not be set there. Exits 1 and lists every dropped option (with what CONFIG has instead).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 FRAGMENT CONFIG" >&2; exit 2; }
fragment=$1
config=$2

dropped=()
while IFS= read -r line; do
	case $line in
	CONFIG_*=*)
		sym=${line%%=*}
		grep -qxF -- "$line" "$config" ||
			dropped+=("$line (got: $(grep -E "^$sym=|^# $sym is not set" "$config" || echo absent))")
		;;
	"# CONFIG_"*" is not set")
		sym=${line#\# }
		sym=${sym%% *}
		! grep -q "^$sym=" "$config" || dropped+=("$line (got: $(grep "^$sym=" "$config"))")
		;;
	esac
done <"$fragment"
if [ ${#dropped[@]} -gt 0 ]; then
	echo "Kconfig did not keep these options of $fragment (a missing dependency or a renamed symbol):" >&2
	printf '  %s\n' "${dropped[@]}" >&2
	exit 1
fi
