#!/usr/bin/env bash
# make demo: a reading travels from a simulated sensor, through Fieldgate's
# local broker and its bridge, to a real Mosquitto acting as the central
# broker, over mutually authenticated TLS. Everything it makes lives in
# demo/run/ and is made anew each time; Ctrl-C stops everything it started.
#
#   DEMO_PORT=18883     the central broker's TLS port
#   DEMO_SECONDS=N      stop after N seconds (exit 0 if readings arrived)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
run="$top/demo/run"
port=${DEMO_PORT:-18883}
export PATH="/usr/local/go/bin:$PATH"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Installing Mosquitto and openssl if missing"
"$top/.ci/deps"
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)

say "Building bin/fieldgate"
make -C "$top" --no-print-directory build >/dev/null || { echo "build failed: run 'make build' to see why" >&2; exit 1; }

say "Making a throwaway PKI in demo/run/ with openssl"
rm -rf "$run"
mkdir -p "$run/state"
chmod 700 "$run" "$run/state"
cd "$run"
umask 077
# The CA, as the Mosquitto TLS tutorials make it (EC P-256 instead of RSA).
openssl req -new -x509 -days 30 -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -keyout ca.key -out ca.crt -subj "/O=Fieldgate Demo/CN=Fieldgate Demo CA" 2>/dev/null
# issue NAME CN EXT: a key, a CSR and a certificate signed by the CA.
issue() {
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$1.key" -out "$1.csr" -subj "/O=Fieldgate Demo/CN=$2" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days 30 -out "$1.crt" -extfile "$1.ext" 2>/dev/null
}
issue central localhost "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
issue device EGW-DEMO-0001 "extendedKeyUsage=clientAuth"
issue observer observer "extendedKeyUsage=clientAuth"
chmod 644 ca.crt central.crt central.key
echo "CA: ca.crt   central broker: central.crt (localhost, 127.0.0.1)"
echo "device: device.crt (CN=EGW-DEMO-0001), key device.key (mode $(stat -c %a device.key))"

cat > mosquitto.conf <<EOF
# The central broker, set up as in the field: TLS only, a client
# certificate required, its CN used as the username.
user $(id -un)
per_listener_settings false
allow_anonymous false
persistence false
log_dest stderr
listener $port 127.0.0.1
cafile $run/ca.crt
certfile $run/central.crt
keyfile $run/central.key
require_certificate true
use_identity_as_username true
EOF

cat > fieldgate.toml <<EOF
[device]
id = "EGW-DEMO-0001"
state_dir = "$run/state"

[identity]
key  = "file:$run/device.key"
cert = "$run/device.crt"
ca   = "$run/ca.crt"

[[broker.listener]]
address = "127.0.0.1:11883"

[bridge]
address = ["ssl://localhost:$port"]

[[bridge.route]]
local = "sensors/#"
direction = "out"
remote_prefix = "devices/%d/"
qos = 1

[[sensor]]
name = "sim"
driver = "simulated"
interval = "1s"
EOF

pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Starting Mosquitto (the central broker) on 127.0.0.1:$port"
"$mosquitto_bin" -c mosquitto.conf 2> mosquitto.log &
pids+=($!)
for _ in $(seq 100); do
  grep -q " running" mosquitto.log && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat mosquitto.log >&2; exit 1; }
  sleep 0.1
done
grep -q " running" mosquitto.log || { echo "Mosquitto did not start:" >&2; cat mosquitto.log >&2; exit 1; }

say "Checking the configuration"
"$top/bin/fieldgate" check-config --config fieldgate.toml

say "Starting fieldgate run (log: demo/run/fieldgate.log)"
"$top/bin/fieldgate" run --config fieldgate.toml 2> fieldgate.log &
pids+=($!)
tail -n +1 -f fieldgate.log | sed -u 's/^/fieldgate| /' &
pids+=($!)

say "Readings arriving at the central broker (mosquitto_sub -t 'devices/#'); Ctrl-C to stop"
sub=(mosquitto_sub -h localhost -p "$port" --cafile ca.crt --cert observer.crt --key observer.key -t 'devices/#' -v)
if [ -n "${DEMO_SECONDS:-}" ]; then
  got=$(timeout "$DEMO_SECONDS" "${sub[@]}" | tee /dev/stderr | grep -c 'sensors/sim/' || true)
  echo "$got readings arrived in ${DEMO_SECONDS}s"
  [ "$got" -gt 0 ]
else
  "${sub[@]}"
fi
