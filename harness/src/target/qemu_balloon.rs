//! The host side of QEMU's `virtio-balloon-device` (VIRTIO §5.5), played over QMP.
//!
//! - A new target (`config_change` of `num_pages`, le32 at configuration offset 0) is QMP
//!   `balloon` with the logical guest size `ram - num_pages * 4096` bytes; QEMU sets
//!   `num_pages`, bumps ConfigGeneration and raises the configuration change interrupt.
//! - Port 2 (statistics): `host_send` is a statistics request. QEMU asks the driver from a
//!   timer that the `guest-stats-polling-interval` property (seconds) arms; setting it from 0
//!   to a value creates the timer due at once, and each statistics buffer QEMU receives re-arms
//!   it one interval later. The harness sets 0 and then [`STATS_INTERVAL_S`] (an hour, so QEMU
//!   never asks on its own during a case) for every request. `host_take` reads `guest-stats` (`qom-get`) and turns
//!   the statistics QEMU holds into the canonical form of the reference (10-byte entries, le16
//!   tag and le64 value, sorted by tag; QEMU reports a statistic it never received as
//!   2^64 - 1, which is left out). QEMU keeps one value per tag rather than one set per
//!   buffer, so a unit is returned whenever that view changed since the last call.
//! - Port 3 (`actual`): `query-balloon` reports the logical guest size
//!   `ram - actual * 4096` bytes, from which the `actual` QEMU uses is recovered (le32).
//! - Ports 0 and 1 (the page frame numbers of inflate and deflate requests): QEMU has no host
//!   view of them, so cases that read them are unsupported on this target.

use serde_json::Value;

/// QOM path of the balloon device (`id=balloon0` on the command line).
pub const QOM_PATH: &str = "/machine/peripheral/balloon0";
/// Host port of statistics (as the reference's balloon).
pub const PORT_STATS: u32 = 2;
/// Host port of `actual` (as the reference's balloon).
pub const PORT_ACTUAL: u32 = 3;
/// Statistics polling interval the harness sets, in seconds: long enough that QEMU never
/// asks on its own within a case.
pub const STATS_INTERVAL_S: u64 = 3600;
/// Balloon page size in bytes (§5.5.6).
const PAGE: u64 = 4096;

/// QEMU's names of the statistics of §5.5.6.4, indexed by tag.
const STAT_NAMES: [&str; 10] = [
    "stat-swap-in",
    "stat-swap-out",
    "stat-major-faults",
    "stat-minor-faults",
    "stat-free-memory",
    "stat-total-memory",
    "stat-available-memory",
    "stat-disk-caches",
    "stat-htlb-pgalloc",
    "stat-htlb-pgfail",
];

/// The QEMU arguments of the balloon: `virtio-balloon-device` (statsq always offered) with
/// VIRTIO_BALLOON_F_DEFLATE_ON_OOM offered too, named so QMP can address it.
pub fn qemu_args() -> Vec<String> {
    vec![
        "-device".into(),
        "virtio-balloon-device,id=balloon0,deflate-on-oom=on".into(),
    ]
}

/// The `value` argument of QMP `balloon` that makes `num_pages` read `data` (le32 at
/// configuration offset `offset`, which must be 0) on a guest of `ram` bytes.
///
/// Errors: a change of another field or width, or a target not below the RAM size (QEMU
/// takes only a positive logical size).
pub fn balloon_value(offset: u64, data: &[u8], ram: u64) -> Result<u64, String> {
    let pages = match (offset, <[u8; 4]>::try_from(data)) {
        (0, Ok(b)) => u64::from(u32::from_le_bytes(b)),
        _ => {
            return Err(format!(
                "host-side change of {} bytes at configuration offset {offset:#x} (QEMU balloon: only the 4-byte num_pages at 0, through QMP balloon)",
                data.len()
            ))
        }
    };
    let bytes = pages * PAGE;
    if bytes >= ram {
        return Err(format!(
            "num_pages {pages} ({bytes} bytes) is not below the guest's {ram} bytes of RAM"
        ));
    }
    Ok(ram - bytes)
}

/// The `actual` value (le32) behind a `query-balloon` reply on a guest of `ram` bytes.
pub fn actual_from_query(reply: &Value, ram: u64) -> Result<Vec<u8>, String> {
    // QEMU computes the logical size as a signed number: an `actual` beyond the RAM size
    // makes it negative.
    let logical = reply
        .get("actual")
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("query-balloon reply without a numeric `actual`: {reply}"))?;
    let pages = (i128::from(ram) - i128::from(logical)) / PAGE as i128;
    let pages = u32::try_from(pages)
        .map_err(|_| format!("query-balloon `actual` {logical} gives {pages} pages"))?;
    Ok(pages.to_le_bytes().to_vec())
}

/// The statistics of a `guest-stats` reply in canonical form (see the module docs).
pub fn stats_from_qom(reply: &Value) -> Result<Vec<u8>, String> {
    let stats = reply
        .get("stats")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("guest-stats reply without `stats`: {reply}"))?;
    let mut out = Vec::new();
    for (tag, name) in STAT_NAMES.iter().enumerate() {
        let v = match stats.get(*name) {
            None => continue,
            Some(v) => v,
        };
        // Never received: QEMU reports u64::MAX (some versions print it as -1).
        let val = match (v.as_u64(), v.as_i64()) {
            (Some(u64::MAX), _) | (None, Some(-1)) => continue,
            (Some(u), _) => u,
            _ => return Err(format!("guest-stats `{name}` is not a number: {v}")),
        };
        out.extend_from_slice(&(tag as u16).to_le_bytes());
        out.extend_from_slice(&val.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn balloon_value_is_the_logical_size() {
        assert_eq!(
            balloon_value(0, &0x180u32.to_le_bytes(), 16 << 20),
            Ok((16 << 20) - 0x180 * 4096)
        );
        assert!(balloon_value(4, &[0; 4], 16 << 20).is_err());
        assert!(balloon_value(0, &[0; 2], 16 << 20).is_err());
        assert!(balloon_value(0, &0x1000u32.to_le_bytes(), 16 << 20).is_err());
    }

    #[test]
    fn actual_comes_back_in_pages() {
        let r = json!({ "actual": (16u64 << 20) - 3 * 4096 });
        assert_eq!(actual_from_query(&r, 16 << 20).unwrap(), vec![3, 0, 0, 0]);
        let beyond = json!({ "actual": (16i64 << 20) - 0x1234 * 4096 });
        assert_eq!(
            actual_from_query(&beyond, 16 << 20).unwrap(),
            vec![0x34, 0x12, 0, 0]
        );
        assert!(actual_from_query(&json!({}), 16 << 20).is_err());
    }

    #[test]
    fn stats_leave_out_what_was_never_received() {
        let r = json!({ "stats": {
            "stat-swap-in": 0x1000u64, "stat-free-memory": 5u64, "stat-total-memory": u64::MAX,
            "stat-swap-out": -1, "stat-unknown": 7u64 }, "last-update": 1 });
        let mut want = Vec::new();
        for (t, v) in [(0u16, 0x1000u64), (4, 5)] {
            want.extend_from_slice(&t.to_le_bytes());
            want.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(stats_from_qom(&r).unwrap(), want);
        assert!(stats_from_qom(&json!({ "stats": { "stat-swap-in": "x" } })).is_err());
        assert!(stats_from_qom(&json!({})).is_err());
    }
}
