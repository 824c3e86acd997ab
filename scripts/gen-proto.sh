#!/usr/bin/env bash
# Regenerate the committed protobuf/gRPC stubs.
#   scripts/gen-proto.sh            write them in place
#   scripts/gen-proto.sh OUTDIR     write them under OUTDIR (same relative paths),
#                                   used by the test that checks the committed stubs
# Stubs are generated with grpcio-tools 1.84.0 so that they import under
# grpcio >= 1.84.0 (the GPU hosts ship 1.84.0; newer tools emit a version guard).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
python=${PYTHON:-python3}
mkdir -p "$out/proto" "$out/daemon"
"$python" -m grpc_tools.protoc -I "$root/proto" \
  --python_out="$out/proto" --pyi_out="$out/proto" --grpc_python_out="$out/proto" \
  "$root/proto/snapd/v1/snapd.proto"
"$python" -m grpc_tools.protoc -I "$root/daemon" \
  --python_out="$out/daemon" --pyi_out="$out/daemon" \
  "$root/daemon/snapd_daemon/criu/rpc.proto" "$root/daemon/snapd_daemon/criu/images.proto"
