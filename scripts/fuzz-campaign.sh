#!/bin/bash
# A long fuzzing campaign: random guest programs (btvisor::fuzz) at ring 0
# and 3, with and without paging, odd segments, 16-bit code and devices.
# Failing programs are saved (with their stderr) in SAVE; copy each into
# guest-images/fuzz/ as a regression image (tests/fuzz.rs replays them).
# usage: scripts/fuzz-campaign.sh [COUNT] [SEED] [SAVE]
#   COUNT programs (default 100000), seeds SEED.. (default: from the clock)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-100000}
SEED=${2:-$(date +%s)}
SAVE=${3:-fuzz-failures}
cargo build --release -q
echo "campaign: $COUNT programs from seed $SEED; failures go to $SAVE/" >&2
exec target/release/btvisor-fuzz --count "$COUNT" --seed "$SEED" --jobs "$(nproc)" --save "$SAVE"
