#!/bin/bash -eu
# OSS-Fuzz / ClusterFuzzLite build script (the builder image provides cargo-fuzz, a nightly
# toolchain, $SANITIZER, $SRC and $OUT). It builds every target in fuzz/ with the sanitizer the
# builder asks for and ships each with its committed seed corpus.
#
# For an OSS-Fuzz project, copy this file to projects/<name>/build.sh; ClusterFuzzLite calls
# it from .clusterfuzzlite/build.sh.
cd "$SRC/virtio-conform"

targets="queue_chain mmio_regs diff_mmio"
cargo fuzz build -O --debug-assertions
for t in $targets; do
  cp "fuzz/target/x86_64-unknown-linux-gnu/release/$t" "$OUT/"
  # Seeds only (top-level files); regressions/ holds inputs for mutants, not the reference.
  find "corpora/$t" -maxdepth 1 -type f ! -name '*.md' -print0 \
    | xargs -0 -r zip -q -j "$OUT/${t}_seed_corpus.zip"
done
