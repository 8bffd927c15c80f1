# Two CPU-bound processes at once (scripts/smp-compare.sh runs this image
# with -smp 1 and -smp 2): the time between the uptime readings is what
# the second CPU should halve.
read t0 rest < /proc/uptime
/bench/cpu > /tmp/a &
/bench/cpu > /tmp/b &
wait
read t1 rest < /proc/uptime
cat /tmp/a /tmp/b
echo "PAR-SECONDS $t0 $t1"
