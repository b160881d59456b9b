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

say "Installing Mosquitto if missing"
"$top/.ci/deps"
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)

say "Building bin/fieldgate and bin/fieldgate-factory"
make -C "$top" --no-print-directory build >/dev/null || { echo "build failed: run 'make build' to see why" >&2; exit 1; }

say "Making a throwaway PKI in demo/run/pki with fieldgate-factory"
rm -rf "$run"
mkdir -p "$run"
chmod 700 "$run"
cd "$run"
umask 077
factory="$top/bin/fieldgate-factory"
fieldgate="$top/bin/fieldgate"
"$factory" init --dir pki --org "Fieldgate Demo"
"$factory" server-cert --dir pki --cn localhost --dns localhost --ip 127.0.0.1 --out-cert central.crt --out-key central.key
"$factory" client-cert --dir pki --cn observer --out-cert observer.crt --out-key observer.key
"$factory" crl --dir pki --out site.crl

cat > mosquitto.conf <<EOF
# The central broker, set up as in the field: TLS only, a client
# certificate of the PKI required, its CN used as the username, the CRL.
user $(id -un)
per_listener_settings false
allow_anonymous false
persistence false
log_dest stderr
listener $port 127.0.0.1
cafile $run/pki/ca-chain.crt
certfile $run/central.crt
keyfile $run/central.key
require_certificate true
use_identity_as_username true
crlfile $run/site.crl
EOF

cat > fieldgate.toml <<EOF
[device]
state_dir = "$run/state"     # the device id is the certificate's CN

[identity]
key  = "file:$run/state/device.key"
cert = "$run/state/device.crt"
ca   = "$run/pki/ca-chain.crt"

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

say "Provisioning the device: its key made in place, a CSR, signed by the factory, installed"
"$fieldgate" provision csr --config fieldgate.toml --id EGW-DEMO-0001 --out device.csr
"$factory" sign --dir pki --csr device.csr --out device.crt
"$fieldgate" provision install --config fieldgate.toml --cert device.crt --chain pki/ca-chain.crt
"$fieldgate" provision show --config fieldgate.toml

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
"$fieldgate" check-config --config fieldgate.toml

say "Starting fieldgate run (log: demo/run/fieldgate.log)"
"$fieldgate" run --config fieldgate.toml 2> fieldgate.log &
pids+=($!)
tail -n +1 -f fieldgate.log | sed -u 's/^/fieldgate| /' &
pids+=($!)

say "Readings arriving at the central broker (mosquitto_sub -t 'devices/#'); Ctrl-C to stop"
sub=(mosquitto_sub -h localhost -p "$port" --cafile pki/ca-chain.crt --cert observer.crt --key observer.key -t 'devices/#' -v)
if [ -n "${DEMO_SECONDS:-}" ]; then
  got=$(timeout "$DEMO_SECONDS" "${sub[@]}" | tee /dev/stderr | grep -c 'sensors/sim/' || true)
  echo "$got readings arrived in ${DEMO_SECONDS}s"
  [ "$got" -gt 0 ]
else
  "${sub[@]}"
fi
