#!/bin/sh
# make deps: install the missing Debian packages and check the CUDA 13 toolkit.
# Prints one ✓/✗ line per part; exits non-zero if something needed is still missing.
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
PKGS="liblua5.4-dev libcmocka-dev libjansson-dev libssl-dev libsqlite3-dev zlib1g-dev pkg-config"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    echo "deps: installing$missing"
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q $missing >/dev/null || {
        echo "✗ apt-get install$missing failed (run it by hand)"; exit 1; }
fi
ok=1
check() { # name, test command, hint
    if sh -c "$2" >/dev/null 2>&1; then echo "✓ $1"; else echo "✗ $1 — $3"; ok=0; fi
}
check "Lua 5.4 (static liblua5.4.a)" "ls /usr/lib/*/liblua5.4.a" "apt-get install liblua5.4-dev"
check "cmocka" "ls /usr/include/cmocka.h" "apt-get install libcmocka-dev"
check "jansson" "ls /usr/include/jansson.h" "apt-get install libjansson-dev"
check "OpenSSL libcrypto" "ls /usr/include/openssl/evp.h" "apt-get install libssl-dev"
check "SQLite (static libsqlite3.a, the tuning db)" "ls /usr/lib/*/libsqlite3.a /usr/include/sqlite3.h" "apt-get install libsqlite3-dev"
check "zlib (static libz.a, TensorBoard PNGs)" "ls /usr/lib/*/libz.a /usr/include/zlib.h" "apt-get install zlib1g-dev"
check "CUDA toolkit 13 ($CUDA_HOME)" "$CUDA_HOME/bin/nvcc --version | grep -q 'release 13'" "install CUDA 13 or set CUDA_HOME"
check "NVRTC" "ls $CUDA_HOME/lib64/libnvrtc.so" "part of the CUDA toolkit"
check "cuBLASLt" "ls $CUDA_HOME/lib64/libcublasLt.so" "part of the CUDA toolkit"
check "NCCL" "ls $CUDA_HOME/lib64/libnccl.so /usr/lib/*/libnccl.so /usr/local/lib/libnccl.so 2>/dev/null | grep -q ." "apt-get install libnccl-dev"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "✓ GPU: $(nvidia-smi -L | head -1)"
else
    echo "✗ GPU — none found: everything CPU-side works; GPU tests print 'skipped: no CUDA device'"
fi
[ $ok = 1 ]
