#!/usr/bin/env python3
# Generates specs/sequences/net.*.jsonl (run from the repository root). The cases are data;
# this script only keeps the many byte offsets and hex frames consistent.
import json, os
OUT = os.environ.get("OUT", "specs/sequences")
def hx(b): return b.hex()
SRC = bytes.fromhex("020000000009")
def frame(dst=b"\xff"*6, n=60, seed=0, tag=None):
    f = dst + SRC
    if tag is not None:
        f += bytes([0x81, 0x00]) + tag.to_bytes(2, "big")
    f += bytes([0x08, 0x00])
    f += bytes((seed + 7 * i) & 0xff for i in range(n - len(f)))
    return f
F = frame()
H12 = bytes(12)
H10 = bytes(10)
A = 0x700000   # explicit receive buffers (ring area of queue 6, which no net case uses)

cases = {}
def case(cid, title, reqs, steps, versions=(2,), features=None, needs=None, desc=None):
    h = {"case": cid, "title": title, "requirements": reqs, "versions": list(versions), "devices": ["net"]}
    if features: h["features"] = features
    if needs: h["needs"] = needs
    if desc: h["description"] = desc
    cases[cid] = [h] + steps

def init(feats=None, queues=(0, 1), size=8, sizes=None, **kw):
    s = {"op": "init", "queues": [{"index": q, "size": (sizes or {}).get(q, size)} for q in queues]}
    if feats is not None: s["features"] = feats
    s.update(kw)
    return s

def readable(pkt, cuts):
    """Split `pkt` at the byte offsets in `cuts` into readable buffers."""
    out, prev = [], 0
    for c in list(cuts) + [len(pkt)]:
        if c > prev:
            out.append({"len": c - prev, "data": hx(pkt[prev:c])})
        prev = c
    return out

def tx(pkt, cuts, fr, req, indirect=False, port=0, queue=1):
    p = {"op": "post", "queue": queue, "chain": readable(pkt, cuts)}
    if indirect: p["indirect"] = True
    return [p, {"op": "expect_used", "queue": queue, "len": 0, "req": req},
            {"op": "expect_host", "port": port, "data": hx(fr), "units": 1, "req": req}]

def rxbuf(addr, lens, kick=True, queue=0):
    ch, a = [], addr
    for l in lens:
        ch.append({"len": l, "write": True, "addr": a}); a += l
    s = {"op": "post", "queue": queue, "chain": ch}
    if not kick: s["kick"] = False
    return s

def mem(addr, data, req, level=None):
    s = {"op": "mem_expect", "addr": addr, "data": hx(data), "req": req}
    if level: s["level"] = level
    return s

def ctrl(q, cmd, data_cuts=None, ack=0, req="NET-DEV-28", level=None):
    chain = readable(cmd, data_cuts or []) + [{"len": 1, "write": True}]
    st = [{"op": "post", "queue": q, "chain": chain},
          {"op": "expect_used", "queue": q, "len": 1, "req": "NET-DEV-28"}]
    e = {"op": "expect_data", "queue": q, "data": "%02x" % ack, "req": req}
    if level: e["level"] = level
    st.append(e)
    return st

# ---------------------------------------------------------------- identity
case("net.device-id", "A network device reports DeviceID 1 and has receiveq1 and transmitq1", ["NET-DEV-01", "NET-DEV-02"], [
    {"op": "read", "reg": "DeviceID", "expect": 1, "req": "NET-DEV-01"},
    {"op": "read", "reg": "QueueNumMax", "queue": 0, "expect_ne": 0, "req": "NET-DEV-02"},
    {"op": "read", "reg": "QueueNumMax", "queue": 1, "expect_ne": 0, "req": "NET-DEV-02"},
], versions=(1, 2))

# ---------------------------------------------------------------- transmit framings
pkt = H12 + F
steps = [init(sizes={1: 128})]
for cuts in ([], [1], [10], [11], [12], [13], [40], list(range(1, 12)) + [12], list(range(6, 72, 6))):
    steps += tx(pkt, cuts, F, ["NET-DEV-18", "NET-DEV-19", "VQ-DEV-01"])
case("net.tx-framings", "A transmitted frame is the same whatever the descriptor layout (one descriptor, header split at any byte, many small descriptors)",
     ["NET-DEV-18", "NET-DEV-19", "VQ-DEV-01"], steps,
     desc="The same 12-byte header plus 60-byte frame is posted on transmitq1 as one descriptor, split at bytes 1, 10, 11, 12, 13 and 40, as 1-byte header descriptors, and as 6-byte descriptors. The used len of a transmit chain is 0 (no device-writable bytes); the host must receive the 60-byte frame once each time.")
steps = [init(["VERSION_1", "INDIRECT_DESC"], sizes={1: 16})]
for cuts in ([], [12], [3, 9, 12, 30]):
    steps += tx(pkt, cuts, F, ["NET-DEV-18", "VQ-DEV-01"], indirect=True)
case("net.tx-indirect", "Transmit through an indirect table, header split or not", ["NET-DEV-18", "VQ-DEV-01"], steps, features=["INDIRECT_DESC"])

# header fields the device must not rely on
def hdr(flags=0, gso=0, hdr_len=0, gso_size=0, cs=0, co=0, nb=0, legacy=False):
    b = bytes([flags, gso]) + b"".join(v.to_bytes(2, "little") for v in (hdr_len, gso_size, cs, co))
    return b if legacy else b + nb.to_bytes(2, "little")
steps = [init()]
steps += tx(hdr(flags=0x80) + F, [], F, "NET-DEV-15")
steps += tx(hdr(cs=14, co=6) + F, [12], F, "NET-DEV-16")
steps += tx(hdr(hdr_len=0xffff, gso_size=0x1234) + F, [], F, "NET-DEV-17")
case("net.tx-header-fields-not-relied-on", "Unknown flags, csum_start/csum_offset without NEEDS_CSUM and a bogus hdr_len leave the transmitted frame unchanged",
     ["NET-DEV-15", "NET-DEV-16", "NET-DEV-17"], steps,
     desc="With flags 0x80 (no defined meaning), with NEEDS_CSUM clear but csum_start 14 / csum_offset 6, and with hdr_len 0xffff, the frame (whose IP checksum is not valid) must reach the host byte for byte.")

# legacy transmit
steps = [init([])]
steps += tx(H10 + F, [10], F, ["NET-DEV-18", "NET-DEV-19"])
case("net.tx-legacy-header-descriptor", "Legacy: header in its own descriptor, 10 bytes without MRG_RXBUF", ["NET-DEV-18", "NET-DEV-19"], steps, versions=(1,))
steps = [init(["ANY_LAYOUT"], sizes={1: 16})]
for cuts in ([], [1], [9], [11], [5, 10, 20]):
    steps += tx(H10 + F, cuts, F, ["NET-DEV-18", "NET-DEV-19", "VQ-DEV-01"])
case("net.tx-legacy-any-layout", "Legacy with ANY_LAYOUT: the 10-byte header may share or straddle descriptors", ["NET-DEV-18", "NET-DEV-19", "VQ-DEV-01"], steps, versions=(1,), features=["ANY_LAYOUT"])

# ---------------------------------------------------------------- receive
def rx_checks(addr_of, hlen, fr, nb=1, level=None, req_frame="NET-DEV-27"):
    """addr_of(k) = guest address of byte k of the buffer stream."""
    st = [mem(addr_of(0), b"\x00", "NET-DEV-25", level), mem(addr_of(1), b"\x00", "NET-DEV-26", level)]
    if hlen == 12:
        st.append(mem(addr_of(10), nb.to_bytes(2, "little"), ["NET-DEV-20" if nb == 1 else "NET-DEV-21"], level))
    st.append(mem(addr_of(hlen), fr, [req_frame, "NET-DEV-19"], level))
    return st

steps = [init(), rxbuf(A, [1526]),
         {"op": "host_send", "port": 0, "data": hx(F)},
         {"op": "expect_used", "queue": 0, "len": 72, "req": ["NET-DEV-22", "NET-DEV-27"]}]
steps += rx_checks(lambda k: A + k, 12, F)
# header split inside num_buffers
B = A + 0x1000
steps += [rxbuf(B, [11, 1515]), {"op": "host_send", "port": 0, "data": hx(F)},
          {"op": "expect_used", "queue": 0, "len": 72, "req": ["NET-DEV-22", "NET-DEV-27", "VQ-DEV-01"]}]
steps += rx_checks(lambda k: B + k, 12, F)
# two buffers, one frame: exactly one used
C, D = A + 0x2000, A + 0x3000
steps += [rxbuf(C, [1526], kick=False), rxbuf(D, [1526]),
          {"op": "host_send", "port": 0, "data": hx(F)},
          {"op": "expect_used", "queue": 0, "count": 1, "len": 72, "req": "NET-DEV-22"}]
steps += rx_checks(lambda k: C + k, 12, F)
F2 = frame(seed=3)
steps += [{"op": "host_send", "port": 0, "data": hx(F2)},
          {"op": "expect_used", "queue": 0, "count": 1, "len": 72, "req": "NET-DEV-22"}]
steps += rx_checks(lambda k: D + k, 12, F2)
case("net.rx-single-buffer", "A received frame lands in one buffer after a 12-byte header with num_buffers 1, whatever the buffer's descriptors",
     ["NET-DEV-20", "NET-DEV-22", "NET-DEV-25", "NET-DEV-26", "NET-DEV-27", "NET-DEV-19"], steps,
     desc="Without MRG_RXBUF. Receive buffers of 1526 bytes (the size §5.1.6.3.1 asks for), one of them split after 11 bytes (inside num_buffers). Only flags (0), gso_type (GSO_NONE), num_buffers (1) and the frame bytes are checked: the other header fields are not constrained without offloads.")

steps = [init([]), rxbuf(A, [1526]), {"op": "host_send", "port": 0, "data": hx(F)},
         {"op": "expect_used", "queue": 0, "len": 70, "req": ["NET-DEV-19", "NET-DEV-22"]}]
steps += rx_checks(lambda k: A + k, 10, F)
steps += [rxbuf(B, [3, 1523]), {"op": "host_send", "port": 0, "data": hx(F)},
          {"op": "expect_used", "queue": 0, "len": 70, "req": ["NET-DEV-19", "VQ-DEV-01"]}]
steps += rx_checks(lambda k: B + k, 10, F)
case("net.rx-legacy-header", "Legacy without MRG_RXBUF: received frames follow a 10-byte header", ["NET-DEV-19", "NET-DEV-22", "NET-DEV-25", "NET-DEV-26", "NET-DEV-27"], steps, versions=(1,),
     desc="The legacy header has no num_buffers (§5.1.6.1); the second buffer is split after 3 bytes, which the receive path may not assume away (a legacy driver without ANY_LAYOUT would not do this, but ANY_LAYOUT is about what the driver may send; the device still must not assume a layout).")

BIG = frame(n=100, seed=11)
def mrg_steps(feats, hlen_total_ok=True):
    bufs = [A, A + 0x100, A + 0x200]
    st = [init(feats)]
    st += [rxbuf(bufs[0], [40], kick=False), rxbuf(bufs[1], [40], kick=False), rxbuf(bufs[2], [40])]
    st += [{"op": "host_send", "port": 0, "data": hx(BIG)},
           {"op": "expect_used", "queue": 0, "count": 3, "len_max": 40, "req": ["NET-DEV-24", "NET-DEV-21"]},
           mem(bufs[0] + 10, (3).to_bytes(2, "little"), ["NET-DEV-21", "NET-DEV-42"]),
           mem(bufs[0], b"\x00\x00", ["NET-DEV-25", "NET-DEV-26"]),
           mem(bufs[0] + 12, BIG[:28], ["NET-DEV-23", "NET-DEV-19"]),
           mem(bufs[1], BIG[28:68], "NET-DEV-23"),
           mem(bufs[2], BIG[68:], "NET-DEV-23")]
    # a small frame in a mergeable buffer: num_buffers 1
    E = A + 0x400
    st += [rxbuf(E, [1526]), {"op": "host_send", "port": 0, "data": hx(F)},
           {"op": "expect_used", "queue": 0, "count": 1, "len": 72, "req": "NET-DEV-21"},
           mem(E + 10, b"\x01\x00", "NET-DEV-21"), mem(E + 12, F, ["NET-DEV-27", "NET-DEV-19"])]
    return st
case("net.rx-mergeable", "MRG_RXBUF: a 112-byte header+frame spreads over three 40-byte buffers with num_buffers 3, all used together",
     ["NET-DEV-21", "NET-DEV-23", "NET-DEV-24", "NET-DEV-25", "NET-DEV-26", "NET-DEV-19"], mrg_steps(["VERSION_1", "NET_F_MRG_RXBUF"]), features=["NET_F_MRG_RXBUF"],
     desc="Header (12) plus 100-byte frame = 112 bytes: the first two buffers must be filled to their 40 bytes, the last holds 32; used.idx advances by 3 at once; num_buffers reads 3. A later 60-byte frame in a large buffer has num_buffers 1.")
case("net.rx-mergeable-legacy", "Legacy with MRG_RXBUF: the header grows to 12 bytes with num_buffers",
     ["NET-DEV-19", "NET-DEV-21", "NET-DEV-23", "NET-DEV-24", "NET-DEV-42"], mrg_steps(["NET_F_MRG_RXBUF"]), versions=(1,), features=["NET_F_MRG_RXBUF"])

steps = [init(), {"op": "host_send", "port": 0, "data": hx(F)}, rxbuf(A, [1526]),
         {"op": "expect_used", "queue": 0, "len": 72, "req": "NET-DEV-27", "level": "MAY"}]
steps += rx_checks(lambda k: A + k, 12, F, level="MAY")
case("net.rx-frame-before-buffers", "A frame that arrives before any receive buffer is posted is delivered once one is (informational: dropping it is allowed)",
     ["NET-DEV-27"], steps,
     desc="No statement obliges a device to hold a frame that found no buffer; holding it (QEMU, the reference) or dropping it both pass. What is graded is memory safety and liveness.")

steps = [init(upto="QUEUES"),
         {"op": "post", "queue": 0, "chain": [{"len": 1526, "write": True, "addr": A}]},
         {"op": "host_send", "port": 0, "data": hx(F)},
         {"op": "expect_used", "queue": 0, "none": True, "req": "STATUS-DEV-01"},
         {"op": "expect_interrupt", "used": False, "req": "STATUS-DEV-01"},
         {"op": "write", "reg": "Status", "value": 15},
         {"op": "kick", "queue": 0},
         {"op": "host_send", "port": 0, "data": hx(F)},
         {"op": "expect_used", "queue": 0, "count": 1, "len": 72, "req": "NET-DEV-27"}]
steps += rx_checks(lambda k: A + k, 12, F)
case("net.rx-no-use-before-driver-ok", "A frame arriving before DRIVER_OK does not use the receive buffers posted so far", ["STATUS-DEV-01", "NET-DEV-27"], steps,
     desc="// negative probe: the buffer is posted and kicked before DRIVER_OK (INIT-DRV-08) on purpose. After DRIVER_OK either the early frame or the later identical one fills it.")

# ---------------------------------------------------------------- configuration
case("net.config-max-virtqueue-pairs", "max_virtqueue_pairs lies in 1..=0x8000 when MQ is offered", ["NET-DEV-04"], [
    {"op": "read_range", "reg": "Config", "offset": 8, "width": 2, "min": 1, "max": 32768, "req": "NET-DEV-04"},
    init(),
    {"op": "read_range", "reg": "Config", "offset": 8, "width": 2, "min": 1, "max": 32768, "req": "NET-DEV-04"},
], features=["NET_F_MQ"])
case("net.config-mtu", "mtu lies in 68..=65535 (at least 1280 recommended) and never changes", ["NET-DEV-05", "NET-DEV-06", "NET-DEV-07"], [
    {"op": "read", "reg": "Config", "offset": 10, "width": 2, "save": "mtu"},
    {"op": "read_range", "reg": "Config", "offset": 10, "width": 2, "min": 68, "max": 65535, "req": "NET-DEV-05"},
    {"op": "read_range", "reg": "Config", "offset": 10, "width": 2, "min": 1280, "max": 65535, "req": "NET-DEV-06"},
    init(["VERSION_1", "NET_F_MTU"]),
    {"op": "read", "reg": "Config", "offset": 10, "width": 2, "expect_var": "mtu", "req": "NET-DEV-07"},
    {"op": "reset"},
    {"op": "read", "reg": "Config", "offset": 10, "width": 2, "expect_var": "mtu", "req": "NET-DEV-07"},
], features=["NET_F_MTU"])
case("net.config-mac-stable", "mac reads the same in every access width and ConfigGeneration stays put while nothing changes", ["MMIO-REG-07", "NET-DEV-01"], [
    {"op": "read", "reg": "ConfigGeneration", "save": "g0"},
    {"op": "read", "reg": "Config", "offset": 0, "width": 4, "save": "m0"},
    {"op": "read", "reg": "Config", "offset": 4, "width": 2, "save": "m1"},
    {"op": "read", "reg": "ConfigGeneration", "expect_var": "g0", "req": "MMIO-REG-07"},
    init(["VERSION_1", "NET_F_MAC"]),
    {"op": "read", "reg": "ConfigGeneration", "save": "g1"},
    {"op": "read", "reg": "Config", "offset": 0, "width": 4, "expect_var": "m0", "req": "MMIO-REG-07"},
    {"op": "read", "reg": "Config", "offset": 4, "width": 2, "expect_var": "m1", "req": "MMIO-REG-07"},
    {"op": "read", "reg": "Config", "offset": 0, "width": 2, "save": "m0lo"},
    {"op": "read", "reg": "Config", "offset": 0, "width": 4, "mask": 65535, "expect_var": "m0lo", "req": "MMIO-REG-07"},
    {"op": "read", "reg": "ConfigGeneration", "expect_var": "g1", "req": "MMIO-REG-07"},
], features=["NET_F_MAC"])
case("net.link-status-change", "Link down and up: status follows, ConfigGeneration changes and a configuration-change interrupt is raised", ["NET-DEV-14", "MMIO-DEV-07", "OPS-DEV-01"], [
    init(["VERSION_1", "NET_F_STATUS"]),
    {"op": "read", "reg": "ConfigGeneration", "save": "g0"},
    {"op": "config_change", "offset": 6, "data": "0000"},
    {"op": "expect_interrupt", "config": True, "req": ["NET-DEV-14", "OPS-DEV-01"]},
    {"op": "read", "reg": "ConfigGeneration", "expect_ne_var": "g0", "req": "MMIO-DEV-07"},
    {"op": "read", "reg": "Config", "offset": 6, "width": 2, "mask": 1, "expect": 0, "req": "NET-DEV-14"},
    {"op": "ack", "value": 2},
    {"op": "read", "reg": "ConfigGeneration", "save": "g1"},
    {"op": "config_change", "offset": 6, "data": "0100"},
    {"op": "expect_interrupt", "config": True, "req": ["NET-DEV-14", "OPS-DEV-01"]},
    {"op": "read", "reg": "ConfigGeneration", "expect_ne_var": "g1", "req": "MMIO-DEV-07"},
    {"op": "read", "reg": "Config", "offset": 6, "width": 2, "mask": 1, "expect": 1, "req": "NET-DEV-14"},
], features=["NET_F_STATUS"], needs=["config_change"],
     desc="The host changes status (offset 6): bit 0 LINK_UP off, then on. On QEMU this is the monitor's set_link.")

# ---------------------------------------------------------------- features
from itertools import product
deps = [(18, [17]), (19, [17]), (21, [17]), (22, [17]), (23, [17]), (20, [17]),
        (7, [1]), (8, [1]), (10, [1]), (11, [0]), (12, [0]), (14, [0]), (9, [7, 8]), (13, [11, 12])]
steps = [{"op": "write", "reg": "DeviceFeaturesSel", "value": 0}]
for f, need in deps:
    mask = (1 << f) | sum(1 << n for n in need)
    allowed = sorted({m for m in range(mask + 1) if m & ~mask == 0 and (m & (1 << f) == 0 or m & sum(1 << n for n in need))})
    steps.append({"op": "read", "reg": "DeviceFeatures", "mask": mask, "expect_in": allowed, "req": "NET-DEV-03" if f != 20 else ["NET-DEV-03", "NET-DEV-12"]})
case("net.feature-dependencies", "The device offers no network feature without the features it requires", ["NET-DEV-03", "NET-DEV-12"], steps, versions=(1, 2),
     desc="§5.1.3.1 pairs: CTRL_RX, CTRL_VLAN, CTRL_RX_EXTRA, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR need CTRL_VQ; GUEST_TSO4/6 and GUEST_UFO need GUEST_CSUM; HOST_TSO4/6 and HOST_UFO need CSUM; GUEST_ECN needs GUEST_TSO4 or 6; HOST_ECN needs HOST_TSO4 or 6.")

# ---------------------------------------------------------------- MTU
FOVER = frame(dst=b"\xff" * 6, n=65550, seed=6)
F1294 = frame(dst=b"\xff" * 6, n=1294, seed=5)
steps = [init(["VERSION_1", "NET_F_MTU", "NET_F_MRG_RXBUF"], sizes={0: 64})]
for k in range(48):
    steps.append(rxbuf(A + 0x800 * k, [1526], kick=(k == 47)))
steps += [{"op": "host_send", "port": 0, "data": hx(FOVER)},
          {"op": "expect_used", "queue": 0, "none": True, "req": "NET-DEV-08"},
          {"op": "host_send", "port": 0, "data": hx(F)},
          {"op": "expect_used", "queue": 0, "count": 1, "len": 72, "req": "NET-DEV-27"}]
steps += rx_checks(lambda k: A + k, 12, F)
steps += tx(H12 + F1294, [12], F1294, "NET-DEV-09")
case("net.mtu", "With MTU negotiated: a frame longer than any mtu is not received even with room for it; a 1294-byte frame is transmitted whole", ["NET-DEV-08", "NET-DEV-09", "NET-DEV-27"], steps, features=["NET_F_MTU", "NET_F_MRG_RXBUF"],
     desc="The injected frame has 65550 bytes, more than 65535 (the largest mtu) plus 14, and 48 mergeable buffers of 1526 bytes could hold it, so only the mtu rule keeps it out. The transmitted frame is 1280 + 14 bytes, within any mtu that follows the SHOULD of NET-DEV-06 (a device below 1280 gets that non_strict, and this step then exceeds its mtu).")

# ---------------------------------------------------------------- control queue
CQ = 2
steps = [init(["VERSION_1", "NET_F_CTRL_VQ", "NET_F_CTRL_RX"], queues=(0, 1, 2))]
steps += ctrl(CQ, bytes([0, 0, 1]), req="NET-DEV-29")
steps += ctrl(CQ, bytes([0, 0, 0]), [1, 2], req="NET-DEV-29")
steps += ctrl(CQ, bytes([0, 1, 1]), [2], req="NET-DEV-29")
steps += ctrl(CQ, bytes([0, 1, 0]), req="NET-DEV-29")
steps += ctrl(CQ, bytes([0, 0, 1]), [1], req="NET-DEV-29")
case("net.ctrl-rx-mode", "Control queue at index 2 without MQ: PROMISC and ALLMULTI on and off are acknowledged OK, in any descriptor layout",
     ["NET-DEV-02", "NET-DEV-28", "NET-DEV-29"], steps, features=["NET_F_CTRL_VQ", "NET_F_CTRL_RX"])

MAC1 = bytes.fromhex("020000000001"); MCAST = bytes.fromhex("01005e000001"); MAC2 = bytes.fromhex("020000000002")
tbl = (1).to_bytes(4, "little") + MAC1 + (1).to_bytes(4, "little") + MCAST
steps = [init(["VERSION_1", "NET_F_MAC", "NET_F_CTRL_VQ", "NET_F_CTRL_RX", "NET_F_CTRL_MAC_ADDR"], queues=(0, 1, 2))]
steps += ctrl(CQ, bytes([1, 0]) + tbl, [2, 12], req="NET-DEV-32")
steps += ctrl(CQ, bytes([1, 0]) + bytes(8), req="NET-DEV-32")
steps += ctrl(CQ, bytes([1, 0]) + tbl, req="NET-DEV-32")
steps += ctrl(CQ, bytes([1, 1]) + MAC2, [2], req="NET-DEV-33")
steps += [{"op": "read", "reg": "Config", "offset": 0, "width": 4, "expect": int.from_bytes(MAC2[:4], "little"), "req": "NET-DEV-33"},
          {"op": "read", "reg": "Config", "offset": 4, "width": 2, "expect": int.from_bytes(MAC2[4:], "little"), "req": "NET-DEV-33"}]
# receive filter with promiscuous mode off
steps += ctrl(CQ, bytes([0, 0, 0]), req="NET-DEV-29")
steps += [rxbuf(A, [1526]),
          {"op": "host_send", "port": 0, "data": hx(frame(dst=bytes.fromhex("020000000099")))},
          {"op": "expect_used", "queue": 0, "none": True, "req": "NET-DEV-34"},
          {"op": "host_send", "port": 0, "data": hx(frame(dst=MAC2))},
          {"op": "expect_used", "queue": 0, "count": 1, "len": 72, "req": "NET-DEV-34", "level": "MAY"},
          mem(A + 12, frame(dst=MAC2), "NET-DEV-27", "MAY"),
          rxbuf(A + 0x1000, [1526]),
          {"op": "host_send", "port": 0, "data": hx(frame(dst=MAC1, seed=1))},
          {"op": "expect_used", "queue": 0, "count": 1, "len": 72, "req": "NET-DEV-32"},
          mem(A + 0x1000 + 12, frame(dst=MAC1, seed=1), "NET-DEV-32")]
case("net.ctrl-mac", "MAC_TABLE_SET and MAC_ADDR_SET: acknowledged, mac updated before the command is used, the filter follows both",
     ["NET-DEV-28", "NET-DEV-32", "NET-DEV-33", "NET-DEV-34"], steps, features=["NET_F_MAC", "NET_F_CTRL_VQ", "NET_F_CTRL_RX", "NET_F_CTRL_MAC_ADDR"],
     desc="Promiscuous mode is switched off before the filter checks. A frame to a foreign unicast address should be dropped (SHOULD); one to the address set by MAC_ADDR_SET is expected (informational: no statement demands it); one to a table entry must pass, since the table was updated before the command was used.")

VT = frame(dst=b"\xff" * 6, tag=5)
steps = [init(), rxbuf(A, [1526]), {"op": "host_send", "port": 0, "data": hx(VT)},
         {"op": "expect_used", "queue": 0, "count": 1, "len_min": 12, "req": "NET-DEV-35"},
         mem(A + 12, VT, "NET-DEV-35", "MAY")]
case("net.vlan-tagged-without-ctrl-vlan", "Without CTRL_VLAN an 802.1Q-tagged frame is delivered", ["NET-DEV-35"], steps,
     desc="The frame is broadcast, tagged VLAN 5. That the tag is kept in the delivered bytes is informational.")
steps = [init(["VERSION_1", "NET_F_CTRL_VQ", "NET_F_CTRL_RX", "NET_F_CTRL_VLAN"], queues=(0, 1, 2))]
steps += ctrl(CQ, bytes([0, 0, 0]), req="NET-DEV-29")
steps += ctrl(CQ, bytes([2, 0]) + (5).to_bytes(2, "little"), [2], req="NET-DEV-28")
steps += [rxbuf(A, [1526]), {"op": "host_send", "port": 0, "data": hx(frame(tag=6))},
          {"op": "expect_used", "queue": 0, "none": True, "req": "NET-DEV-36", "level": "SHOULD"},
          {"op": "host_send", "port": 0, "data": hx(VT)},
          {"op": "expect_used", "queue": 0, "count": 1, "len_min": 12, "req": "NET-DEV-36"}]
steps += ctrl(CQ, bytes([2, 1]) + (5).to_bytes(2, "little"), req="NET-DEV-28")
case("net.vlan-filter", "With CTRL_VLAN and promiscuous mode off: a frame of a VLAN in the table is delivered, one of another VLAN should be dropped", ["NET-DEV-28", "NET-DEV-36"], steps,
     features=["NET_F_CTRL_VQ", "NET_F_CTRL_RX", "NET_F_CTRL_VLAN"])

steps = [init(["VERSION_1", "NET_F_STATUS", "NET_F_CTRL_VQ", "NET_F_GUEST_ANNOUNCE"], queues=(0, 1, 2)),
         {"op": "config_change", "offset": 6, "data": "0300"},
         {"op": "expect_interrupt", "config": True, "req": "NET-DEV-14"},
         {"op": "read", "reg": "Config", "offset": 6, "width": 2, "bits_set": 2, "req": "NET-DEV-14"},
         {"op": "ack", "value": 2}]
steps += ctrl(CQ, bytes([3, 0]), req="NET-DEV-28")
steps += [{"op": "read", "reg": "Config", "offset": 6, "width": 2, "bits_clear": 2, "req": "NET-DEV-37"},
          {"op": "read", "reg": "Config", "offset": 6, "width": 2, "bits_set": 1, "req": "NET-DEV-14", "level": "MAY"}]
case("net.announce-ack", "ANNOUNCE_ACK clears VIRTIO_NET_S_ANNOUNCE before the command is used", ["NET-DEV-14", "NET-DEV-28", "NET-DEV-37"], steps,
     features=["NET_F_STATUS", "NET_F_CTRL_VQ", "NET_F_GUEST_ANNOUNCE"], needs=["config_change"],
     desc="The host sets ANNOUNCE (status 0x3: link up, announce); on QEMU this is the monitor's announce-self.")

# ---------------------------------------------------------------- multiqueue
steps = [{"op": "require", "reg": "Config", "offset": 8, "width": 2, "expect": 2},
         init(["VERSION_1", "NET_F_CTRL_VQ", "NET_F_MQ"], queues=(0, 1, 2, 3, 4)),
         rxbuf(A, [1526], queue=0), rxbuf(A + 0x1000, [1526], queue=2),
         {"op": "host_send", "port": 1, "data": hx(F)},
         {"op": "expect_used", "queue": 2, "none": True, "req": "NET-DEV-38"},
         {"op": "expect_used", "queue": 0, "count": 1, "len": 72, "req": "NET-DEV-38"}]
steps += ctrl(4, bytes([4, 0]) + (2).to_bytes(2, "little"), req="NET-DEV-40")
steps += tx(H12 + F, [12], F, "NET-DEV-40", port=1, queue=3)
case("net.mq-pairs", "MQ: only receiveq1 before VQ_PAIRS_SET; VQ_PAIRS_SET 2 on the controlq at 2*max_virtqueue_pairs enables transmitq2",
     ["NET-DEV-02", "NET-DEV-38", "NET-DEV-40", "NET-DEV-28"], steps, features=["NET_F_CTRL_VQ", "NET_F_MQ"],
     desc="Written for max_virtqueue_pairs 2 (controlq at index 4); unsupported on a device with another value. A frame the host offers for pair 1 before multiqueue is enabled must land on receiveq1.")

# ---------------------------------------------------------------- reset
steps = [init(), rxbuf(A, [1526]),
         {"op": "post", "queue": 1, "chain": readable(H12 + F, [12]), "kick": False},
         {"op": "reset"},
         {"op": "kick", "queue": 1},
         {"op": "expect_used", "queue": 1, "none": True, "req": "RESET-DEV-02"},
         {"op": "expect_host", "port": 0, "data": "", "units": 0, "req": "RESET-DEV-02"},
         {"op": "expect_used", "queue": 0, "none": True, "req": "RESET-DEV-02"},
         init(), rxbuf(A + 0x1000, [1526]),
         {"op": "host_send", "port": 0, "data": hx(F)},
         {"op": "expect_used", "queue": 0, "count": 1, "len": 72, "req": "RESET-DEV-01"}]
steps += rx_checks(lambda k: A + 0x1000 + k, 12, F)
steps += tx(H12 + F, [], F, "RESET-DEV-01")
case("net.reset-mid-traffic", "A reset with receive and transmit buffers outstanding: nothing is used or sent afterwards, and traffic works after re-initialization",
     ["RESET-DEV-01", "RESET-DEV-02", "NET-DEV-20", "NET-DEV-25", "NET-DEV-26", "NET-DEV-27", "NET-DEV-19"], steps)

for cid, lines in cases.items():
    with open(os.path.join(OUT, cid + ".jsonl"), "w") as f:
        for l in lines:
            f.write(json.dumps(l) + "\n")
print(len(cases), "cases")
