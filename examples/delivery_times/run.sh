#!/usr/bin/env bash
# The second use case, from nothing to a monitored model: a seeded table of deliveries → mlcycle init
# → features → train (as of April) → serve → replay April as live traffic → monitor → batch-score →
# reproduce. Run it as `make example` from the repository root (it uses the repository's environment);
# tests/test_installed_wheel.py runs it with mlcycle installed from its wheel, outside the checkout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mlcycle="${MLCYCLE:-mlcycle}"
cd "$here"
rm -rf project data
python generate.py --out data/deliveries.csv
"$mlcycle" init project --name delivery_times --data data/deliveries.csv --timestamp ordered_at --label delivery_minutes \
  --task regression --entity restaurant_id --label-available-at delivered_at --event-id order_id
cd project
"$mlcycle" features build
"$mlcycle" features publish --end 2025-04-01
"$mlcycle" train --as-of 2025-04-01
port="${PORT:-3017}"
"$mlcycle" serve --port "$port" > data/service.log 2>&1 &
service=$!
trap 'kill $service 2>/dev/null || true' EXIT
for _ in $(seq 240); do
  curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break
  sleep 1
done
curl -sf -X POST "http://127.0.0.1:$port/predict" -H 'content-type: application/json' \
  -d '{"request": {"restaurant_id": 7, "distance_km": 3.2, "items": 4, "weather": "rain", "vehicle": "bike",
       "timestamp": "2025-04-01T12:00:00Z"}}'
echo
"$mlcycle" replay --since 2025-04-01 --rate 400   # finds the service `mlcycle serve` started
kill $service && wait $service 2>/dev/null || true
"$mlcycle" monitor
"$mlcycle" batch-score --day 2025-04-15
"$mlcycle" history
"$mlcycle" reproduce 1
