//! Pool metrics: cStor's pool exporter names (status, capacity, read-only, latency gauges
//! over the last interval) with labels `pool_name` (the seed's alerts) and `pool`
//! (cStor's), plus per-device latency histograms and error counters, scan progress and
//! ETA, and the per-volume sizes cStor exported from `zfs list`.

use std::time::Instant;

use cstor_node::OpenPool;
use cstor_pool::spa::vdev::Health;

use crate::family::{labels, mean_seconds, Families, Memory};

/// cStor's `openebs_pool_status` encoding.
pub(crate) fn status_code(h: Health) -> f64 {
    match h {
        Health::Online => 1.0,
        Health::Degraded => 2.0,
        Health::Faulted => 3.0,
    }
}

/// cStor's device states as numbers, in the pool status encoding (0 Offline, 1 Online,
/// 3 Faulted, 4 Removed, 5 Unavail).
fn device_code(state: &str) -> f64 {
    match state {
        "ONLINE" => 1.0,
        "FAULTED" => 3.0,
        "REMOVED" => 4.0,
        "UNAVAIL" => 5.0,
        _ => 0.0,
    }
}

pub(crate) fn collect(f: &mut Families, m: &mut Memory, p: &OpenPool, now: Instant) {
    let name = p.name();
    let pl = labels(&[("pool_name", name), ("pool", name)]);
    let status = p.spa().status();
    let space = p.engine().space();
    f.gauge(
        "openebs_pool_status",
        "Pool health: 0 Offline, 1 Online, 2 Degraded, 3 Faulted, 4 Removed, 5 Unavail",
        &pl,
        status_code(status.health),
    );
    f.gauge(
        "openebs_pool_size",
        "Usable pool capacity, bytes",
        &pl,
        space.size as f64,
    );
    f.gauge(
        "openebs_used_pool_capacity",
        "Allocated pool capacity, bytes",
        &pl,
        space.allocated as f64,
    );
    f.gauge(
        "openebs_free_pool_capacity",
        "Free pool capacity, bytes",
        &pl,
        space.free as f64,
    );
    let pct = if space.size == 0 {
        0.0
    } else {
        space.allocated as f64 * 100.0 / space.size as f64
    };
    f.gauge(
        "openebs_used_pool_capacity_percent",
        "Allocated share of the pool, percent (cStor's name)",
        &pl,
        pct,
    );
    f.gauge(
        "openebs_pool_used_capacity_percent",
        "Allocated share of the pool, percent (the name the seed's alert uses)",
        &pl,
        pct,
    );
    f.gauge(
        "openebs_pool_read_only",
        "1 while the pool refuses writes (fill above its read-only threshold)",
        &pl,
        if space.read_only { 1.0 } else { 0.0 },
    );
    f.gauge(
        "openebs_pool_read_only_threshold_percent",
        "Fill percentage at which the pool turns read-only",
        &pl,
        f64::from(space.ro_threshold_pct),
    );

    // Latency: per device, and the pool as all its devices' requests together.
    let (mut pool_r, mut pool_w) = ((0, 0), (0, 0));
    for d in p.spa().device_latency() {
        let dl = labels(&[("pool_name", name), ("pool", name), ("device", &d.path)]);
        let key = format!("pool\0{name}\0{}\0{}", d.path, d.guid);
        let r = m.latency_delta(format!("{key}\0r"), &d.read);
        let w = m.latency_delta(format!("{key}\0w"), &d.write);
        pool_r = (pool_r.0 + r.0, pool_r.1 + r.1);
        pool_w = (pool_w.0 + w.0, pool_w.1 + w.1);
        f.gauge(READ_LATENCY, READ_LATENCY_HELP, &dl, mean_seconds(r));
        f.gauge(WRITE_LATENCY, WRITE_LATENCY_HELP, &dl, mean_seconds(w));
        f.histogram(
            "openebs_pool_read_duration_seconds",
            "Latency of a device's successful reads, seconds",
            &dl,
            &d.read,
        );
        f.histogram(
            "openebs_pool_write_duration_seconds",
            "Latency of a device's successful writes, seconds",
            &dl,
            &d.write,
        );
    }
    f.gauge(READ_LATENCY, READ_LATENCY_HELP, &pl, mean_seconds(pool_r));
    f.gauge(WRITE_LATENCY, WRITE_LATENCY_HELP, &pl, mean_seconds(pool_w));

    for g in &status.groups {
        for d in &g.devices {
            let dl = labels(&[("pool_name", name), ("pool", name), ("device", &d.path)]);
            f.gauge(
                "openebs_pool_device_status",
                "Device state: 1 Online, 3 Faulted, 4 Removed, 5 Unavail",
                &dl,
                device_code(&d.state),
            );
            f.counter(
                "openebs_pool_device_read_errors",
                "Read errors of a device since the pool was opened",
                &dl,
                d.read_errors,
            );
            f.counter(
                "openebs_pool_device_write_errors",
                "Write errors of a device since the pool was opened",
                &dl,
                d.write_errors,
            );
            f.counter(
                "openebs_pool_device_checksum_errors",
                "Checksum errors of a device since the pool was opened",
                &dl,
                d.checksum_errors,
            );
        }
    }

    if let Some(s) = p.scan() {
        let sl = labels(&[("pool_name", name), ("pool", name), ("kind", &s.kind)]);
        let running = s.state == "scanning";
        f.gauge(
            "openebs_pool_scan_active",
            "1 while a scrub or resilver runs",
            &sl,
            if running { 1.0 } else { 0.0 },
        );
        f.gauge(
            "openebs_pool_scan_progress_percent",
            "Progress of the running or last scan, percent",
            &sl,
            s.progress_percent,
        );
        f.gauge(
            "openebs_pool_scan_examined_bytes",
            "Bytes the running or last scan examined",
            &sl,
            s.examined_bytes as f64,
        );
        f.gauge(
            "openebs_pool_scan_total_bytes",
            "Bytes the running or last scan has to examine",
            &sl,
            s.total_bytes as f64,
        );
        f.gauge(
            "openebs_pool_scan_repaired_bytes",
            "Bytes the running or last scan rewrote from redundancy",
            &sl,
            s.repaired_bytes as f64,
        );
        f.gauge(
            "openebs_pool_scan_unrecoverable_blocks",
            "Blocks the running or last scan could not repair",
            &sl,
            s.unrecoverable_blocks as f64,
        );
        if running {
            let rate = m.rate(format!("scan\0{name}\0{}", s.kind), s.examined_bytes, now);
            if let Some(rate) = rate {
                let left = s.total_bytes.saturating_sub(s.examined_bytes) as f64;
                f.gauge(
                    "openebs_pool_scan_eta_seconds",
                    "Estimated seconds until the running scan ends (rate since first seen)",
                    &sl,
                    left / rate,
                );
            }
        }
    }

    // Per volume (replica), as cStor's `zfs list` exporter; `name` is POOL/VOLUME.
    let free = space.free as f64;
    for v in p.engine().list_volumes() {
        let full = format!("{name}/{}", v.name);
        let vl = labels(&[
            ("name", &full),
            ("pool_name", name),
            ("pool", name),
            ("vol", &v.name),
        ]);
        f.gauge(
            "openebs_volume_replica_used_size",
            "Bytes a volume (replica) allocates in the pool",
            &vl,
            v.used as f64,
        );
        f.gauge(
            "openebs_volume_replica_available_size",
            "Bytes a thin volume (replica) can still allocate: the pool's free space",
            &vl,
            free,
        );
        f.gauge(
            "openebs_volume_replica_logical_size",
            "Logical size of a volume (replica), bytes",
            &vl,
            v.size as f64,
        );
    }
}

const READ_LATENCY: &str = "openebs_pool_read_latency";
const READ_LATENCY_HELP: &str =
    "Mean read latency over the last scrape interval, seconds (with `device`: one device)";
const WRITE_LATENCY: &str = "openebs_pool_write_latency";
const WRITE_LATENCY_HELP: &str =
    "Mean write latency over the last scrape interval, seconds (with `device`: one device)";
