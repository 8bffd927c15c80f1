# A BusyBox shell workload: pipelines, awk, sort, checksums, many short
# processes, file writes and page faults. Runs in the guest and natively.
T=${TMPDIR:-/tmp}/bw.$$
mkdir -p $T
for r in 1 2 3 4 5; do
    seq 1 20000 | awk '{ s += $1 % 7 } END { print s }'
    seq 1 5000 | sort -rn | uniq | wc -l
    seq 1 30000 > $T/f; md5sum $T/f; sha1sum $T/f; gzip -c $T/f | gunzip | wc -c
    for i in $(seq 1 40); do echo $i | tr 0-9 a-j > /dev/null; done
    find / -xdev -name 'b*' 2>/dev/null | head -50 | wc -l
    cat $T/f | grep 7 | sed 's/7/seven/g' | cut -c1-4 | sort | uniq -c | wc -l
done
rm -rf $T
