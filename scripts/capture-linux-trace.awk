# Turns a QEMU trace log (log backend; events memory_region_ops_read/write and
# virtio_mmio_setting_irq) into the event lines of a trace (format: traces/README.md).
# QEMU logs absolute guest physical addresses; a transport is 0x200 bytes at a 0x200-aligned
# base, so the register offset is the address modulo 0x200.
# Run with the log given twice: pass 1 finds the virtio-mmio transport that holds a device
# (the one whose DeviceID read is non-zero), pass 2 prints its accesses, the level changes of
# the interrupt line, and the "VCTRACE phase NAME" lines the guest wrote to the serial port.
# Everything before the first phase line is dropped: those accesses are the firmware's
# (microvm's SeaBIOS looks at each virtio-mmio transport for a boot device), not Linux's.

function hex(s,    n, i, c) {
  sub(/^0x/, "", s)
  n = 0
  for (i = 1; i <= length(s); i++) {
    c = index("0123456789abcdef", tolower(substr(s, i, 1)))
    if (c == 0) return -1
    n = n * 16 + c - 1
  }
  return n
}

# Value of "key" in the space-separated "key value" pairs of the current line.
function field(key,    i) {
  for (i = 1; i < NF; i++) if ($i == key) return $(i + 1)
  return ""
}

function name_of(    s) {
  s = $0
  if (!sub(/.* name '/, "", s)) return ""
  sub(/'.*/, "", s)
  return s
}

FNR == NR {
  if ($0 ~ /memory_region_ops_read/ && name_of() == "virtio-mmio" &&
      hex(field("addr")) % 512 == 8 && hex(field("value")) != 0 && target == "")
    target = field("mr")
  next
}

FNR == 1 && target == "" {
  print "capture-linux-trace.awk: no virtio-mmio transport with a device was read" > "/dev/stderr"
  exit 1
}

/memory_region_ops_(read|write)/ {
  n = name_of()
  if (n == "virtio-mmio" && field("mr") == target) {
    if (!started) { dropped++; next }
    op = ($0 ~ /memory_region_ops_read/) ? "read" : "write"
    printf "{\"op\":\"%s\",\"offset\":%d,\"width\":%d,\"value\":%d}\n",
      op, hex(field("addr")) % 512, field("size") + 0, hex(field("value"))
  } else if (n == "serial" && $0 ~ /memory_region_ops_write/ && hex(field("addr")) % 8 == 0) {
    c = hex(field("value"))
    if (c == 10) {
      if (match(line, /VCTRACE phase [a-z_]+/)) {
        printf "{\"op\":\"phase\",\"name\":\"%s\"}\n", substr(line, RSTART + 14, RLENGTH - 14)
        started = 1
      }
      line = ""
    } else if (c >= 32 && c < 127) {
      line = line sprintf("%c", c)
    }
  }
  next
}

/virtio_mmio_setting_irq/ {
  l = $NF + 0
  if (started && l != level) printf "{\"op\":\"irq\",\"level\":%d}\n", l
  level = l
}

END {
  if (dropped) printf "capture-linux-trace.awk: dropped %d firmware accesses before the first phase\n", dropped > "/dev/stderr"
}
