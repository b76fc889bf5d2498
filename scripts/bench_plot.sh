#!/usr/bin/env bash
# Renders the depth tables of a serq_bench JSON (cases 6a and 6b: ns per operation against the
# number of entries kept waiting, serq and the hand-rolled queue, callback and use_awaitable) as a
# PNG with gnuplot. Needs gnuplot (`./scripts/setup.sh gnuplot-nox`).
#
# Usage: scripts/bench_plot.sh [bench.json] [out.png] [note]
#        (defaults: build/bench/serq_bench.json, doc/bench_depth.png; the note, e.g. the library's
#        commit, is appended to the caption)
# Regenerate the committed plot:
#        cmake --workflow --preset bench && scripts/bench_plot.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
json=${1:-build/bench/serq_bench.json}
png=${2:-doc/bench_depth.png}
note=${3:-}

if ! command -v gnuplot >/dev/null 2>&1; then
  echo "bench_plot: gnuplot not found; install it with: ./scripts/setup.sh gnuplot-nox" >&2
  exit 1
fi
if [[ ! -r "$json" ]]; then
  echo "bench_plot: no $json; run the benchmark first: cmake --workflow --preset bench" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# serq_bench writes each depth row on one line, keys in a fixed order:
#   {"table": "callback", "id": "6a", "depth": 1, "serq_ns": ..., "hand_ns": ..., "floor_ns": ..., ...}
# Turn each table into "depth serq_ns hand_ns floor_ns" columns.
for table in callback use_awaitable; do
  awk -v table="$table" '
    index($0, "\"table\": \"" table "\"") {
      row = $0
      out = ""
      n = split("depth serq_ns hand_ns floor_ns", keys, " ")
      for (i = 1; i <= n; i++) {
        if (!match(row, "\"" keys[i] "\": [-+0-9.eE]+")) { out = ""; break }
        field = substr(row, RSTART, RLENGTH)
        sub(/^"[a-z_]+": /, "", field)
        out = out (i > 1 ? " " : "") field
      }
      if (out != "") print out
    }' "$json" >"$work/$table.dat"
  if [[ ! -s "$work/$table.dat" ]]; then
    echo "bench_plot: no \"$table\" depth rows in $json (a serq_bench from before cases 6a/6b?)" >&2
    exit 1
  fi
done

# The run's settings, for the caption: rounds, smoke, load average before.
config=$(grep -m1 '"config"' "$json" || true)
rounds=$(sed -n 's/.*"rounds": \([0-9]*\).*/\1/p' <<<"$config")
load=$(sed -n 's/.*"load_before": "\([0-9.]*\) \([0-9.]*\) \([0-9.]*\).*/\1/p' <<<"$config")
ops=$(grep -m1 '"id": "6a"' "$json" | sed -n 's/.*"ops": \([0-9]*\).*/\1/p')
smoke=""
if grep -q '"smoke": true' <<<"$config"; then smoke=" - SMOKE RUN, timings meaningless"; fi
caption="serq_bench cases 6a/6b: ${ops:-?} one-step ops, D entries kept waiting; medians of ${rounds:-?} rounds; load ${load:-?}${smoke}${note:+; $note}"

caption=${caption//_/\\\\_} # gnuplot enhanced text: a literal _ is written \\_

mkdir -p "$(dirname "$png")"
gnuplot <<EOF
set terminal pngcairo size 1100,680 font "DejaVu Sans,11"
set output "$png"
set title "Cost per queued operation against queue depth (lower is better)\n{/*0.8 $caption}"
set xlabel "entries waiting in the queue, D (log scale)"
set ylabel "ns per operation"
set logscale x 2
set format x "%.0f"
set xrange [0.7:400000]
set xtics (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144)
set yrange [0:*]
set grid xtics ytics lc rgb "#dddddd"
set key top left box opaque
set style line 1 lc rgb "#1f77b4" lw 2.5 pt 7 ps 1.2
set style line 2 lc rgb "#1f77b4" lw 2.5 pt 5 ps 1.2 dt 2
set style line 3 lc rgb "#d62728" lw 2.5 pt 7 ps 1.2
set style line 4 lc rgb "#d62728" lw 2.5 pt 5 ps 1.2 dt 2
set style line 5 lc rgb "#888888" lw 1.5 pt 1 ps 1.0 dt 3
plot "$work/callback.dat"      using 1:2 with linespoints ls 1 title "serq, callback", \
     "$work/callback.dat"      using 1:3 with linespoints ls 2 title "hand-rolled queue, callback", \
     "$work/use_awaitable.dat" using 1:2 with linespoints ls 3 title "serq, use\\\\_awaitable", \
     "$work/use_awaitable.dat" using 1:3 with linespoints ls 4 title "hand-rolled queue, use\\\\_awaitable", \
     "$work/use_awaitable.dat" using 1:(\$4 > 0 ? \$4 : 1/0) with linespoints ls 5 title "coroutines alone, no queue (use\\\\_awaitable floor)"
EOF
echo "bench_plot: wrote $png from $json"
