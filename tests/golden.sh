#!/bin/sh
# make golden: regenerate tests/golden/<spec>/ from the current templates, on purpose.
set -e
bin=$1
for s in tiny wt2-moe8; do
    rm -rf tests/golden/$s.new
    "$bin" gen specs/$s.lua -o tests/golden/$s.new
    rm -rf tests/golden/$s
    mv tests/golden/$s.new tests/golden/$s
    echo "golden: refreshed tests/golden/$s"
done
