#!/usr/bin/env bash
# The fan-out hub end to end on localhost: a receiver on :9000, the hub on :8088, three
# events published with curl, then what the receiver got. Stops both when done.
set -euo pipefail
cd "$(dirname "$0")"
export SLUICE_PUBLISH_SECRET="${SLUICE_PUBLISH_SECRET:-local-publish-secret-0123456789}"
SECRET=whsec_ZXhhbXBsZS1iaWxsaW5nLXNpZ25pbmcta2V5LTAwMDE=

cargo build --release -q
# The binary itself, not `cargo run`: stopping cargo would leave the hub running.
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
sluice="$target/release/sluice"
mkdir -p out
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

python3 receiver.py --port 9000 --secret "$SECRET" > out/receiver.log 2>&1 &
pids+=($!)
"$sluice" run hub.toml &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:8088/health > /dev/null 2>&1 && break
  sleep 0.1
done

TOKEN=$("$sluice" token --ttl 300)
publish() {  # topic, JSON data: the original hub's form, base64 payload, lowercase `bearer`
  local payload
  payload=$(printf '%s' "$2" | base64 | tr -d '\n')
  printf 'publish %-8s %s -> ' "$1" "$2"
  curl -sS -H "authorization: bearer $TOKEN" http://127.0.0.1:8088/publish \
    -d "{\"Topic\": \"$1\", \"Payload\": \"$payload\"}"
  echo
}
publish switch '{"body": {"state": "on"}, "path_params": {"room": "kitchen"}}'
publish switch '{"body": {"state": "off"}, "path_params": {"room": "hall"}}'
# New publishers post the JSON itself.
printf 'publish orders   (plain JSON) -> '
curl -sS -H "authorization: Bearer $TOKEN" http://127.0.0.1:8088/v1/topics/orders/events \
  -d '{"body": {"total": 250}, "headers": {"region": "eu"}, "path_params": {"order_id": "o-1"}}'
echo
printf 'publish with a token signed by another secret -> '
curl -sS -o /dev/null -w '%{http_code}\n' -H "authorization: bearer $(SLUICE_PUBLISH_SECRET=not-the-secret-0123456789 "$sluice" token)" \
  http://127.0.0.1:8088/publish -d '{"Topic": "switch", "Payload": "e30="}'

sleep 2
echo
echo "the receiver got:"
cat out/receiver.log
