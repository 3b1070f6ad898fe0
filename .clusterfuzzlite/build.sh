#!/bin/bash -eu
# ClusterFuzzLite entry point: the same build as OSS-Fuzz.
exec bash "$SRC/virtio-conform/fuzz/oss-fuzz/build.sh"
