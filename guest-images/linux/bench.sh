# The benchmark image's workload (scripts/linux-compare.sh times it): a
# BusyBox shell workload between BENCH-SHELL markers, then the CPU-bound
# program and the micro-benchmarks. shell-workload.sh also runs natively.
echo "BENCH-SHELL-START"
sh /shell-workload.sh > /dev/null
echo "BENCH-SHELL-END"
echo "BENCH-CPU-START"
/bench/cpu
echo "BENCH-CPU-END"
/bench/lmbench
