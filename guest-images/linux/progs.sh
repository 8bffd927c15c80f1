# The test-programs image: run each static i386 program; tests/linux.rs
# compares each one's output with the same binary run on the host.
for p in /progs/*; do
    echo "== $(basename $p)"
    $p
    echo "== exit $?"
done
echo "== ok"
