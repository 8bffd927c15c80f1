# The batch image's workload: BusyBox applets exercising process creation,
# pipes, page faults, signals and system calls. Its output is checked by
# tests/linux.rs.
set -e
echo "== uname"; uname -sm
echo "== pipeline"; seq 1 2000 | awk '{ s += $1 * $1 } END { print s }'
echo "== sort"; seq 1 500 | sort -rn | head -3 | tr '\n' ' '; echo
echo "== checksum"; seq 1 10000 > /tmp/f; md5sum /tmp/f | cut -d' ' -f1; sha256sum /tmp/f | cut -c1-16
echo "== fork"; n=0; for i in $(seq 1 20); do n=$((n + $(echo 1))); done; echo $n
echo "== subshell"; (exit 3) || echo "exit status $?"
echo "== kill"; sleep 10 & pid=$!; kill -TERM $pid; wait $pid || echo "killed: $?"
# Centiseconds of uptime (awk, as "0.93" would read as a bad octal number
# in the shell). Rounded: 12.29 * 100 is 1228.99... in binary floating point.
up() { awk '{ printf "%d", $1 * 100 + 0.5 }' /proc/uptime; }
echo "== sleep"; start=$(up); sleep 1; end=$(up); echo "slept_cs $((end - start))"
echo "== ok"
