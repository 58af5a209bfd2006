//! Volume metrics of a served target: cStor's target exporter names (as gauges, values
//! as cStor's istgt reported them: cumulative counts, bytes, nanoseconds), typed
//! counters and latency histograms under Prometheus names, and for a replicated volume
//! the status of every member of its membership record and their rebuild progress.

use std::os::unix::fs::MetadataExt as _;
use std::time::Instant;

use cstor_pool::spa::vdev::Health;
use cstor_replication::volume::Phase;

use crate::family::{Families, Labels, Memory};
use crate::{Backing, TargetSource};

/// cStor's `openebs_volume_status` encoding.
fn volume_code(p: Phase) -> f64 {
    match p {
        Phase::Offline => 1.0,
        Phase::Degraded => 2.0,
        Phase::Healthy => 3.0,
        Phase::Init => 4.0,
    }
}

/// cStor's `openebs_volume_replica_status` encoding (the seed's alert: != 1).
fn replica_code(mode: &str) -> f64 {
    match mode {
        "Healthy" => 1.0,
        "Degraded" => 2.0,
        "Rebuilding" => 3.0,
        _ => 0.0,
    }
}

fn volume_labels(t: &TargetSource) -> Labels {
    let l = &t.labels;
    let mut out = vec![
        ("volume_name".to_owned(), l.volume_name.clone()),
        ("iqn".to_owned(), t.iqn.clone()),
    ];
    for (k, v) in [("pv", &l.pv), ("namespace", &l.namespace), ("pvc", &l.pvc)] {
        if let Some(v) = v {
            out.push((k.to_owned(), v.clone()));
        }
    }
    out
}

pub(crate) fn collect(
    f: &mut Families,
    m: &mut Memory,
    t: &TargetSource,
    added: Instant,
    now: Instant,
) {
    // A target removed from the server between listing and reading is skipped.
    let Some(info) = t.server.targets().into_iter().find(|i| i.iqn == t.iqn) else {
        return;
    };
    let c = info.counters;
    let vl = volume_labels(t);
    let replicated = match &t.backing {
        Backing::Replicated(v) => Some(v.status()),
        _ => None,
    };
    // A pool volume is as healthy as its pool: a DEGRADED pool serves with less
    // redundancy, a FAULTED one does not serve.
    let phase = match (&replicated, &t.backing) {
        (Some(s), _) => s.phase,
        (None, Backing::PoolVolume { pool, .. }) => match pool.spa().status().health {
            Health::Online => Phase::Healthy,
            Health::Degraded => Phase::Degraded,
            Health::Faulted => Phase::Offline,
        },
        (None, _) => Phase::Healthy,
    };
    f.gauge(
        "openebs_volume_status",
        "Volume status: 1 Offline, 2 Degraded, 3 Healthy, 4 Unknown",
        &vl,
        volume_code(phase),
    );
    let size = info.size_bytes as f64;
    f.gauge("openebs_size_of_volume", "Volume size, bytes", &vl, size);
    f.gauge(
        "openebs_logical_size",
        "Volume logical size, bytes",
        &vl,
        size,
    );
    let used = match &t.backing {
        Backing::File(path) => std::fs::metadata(path).ok().map(|md| md.blocks() * 512),
        Backing::PoolVolume { pool, volume } => {
            pool.engine().volume_info(volume).ok().map(|i| i.used)
        }
        Backing::Replicated(_) => None,
    };
    if let Some(used) = used {
        f.gauge(
            "openebs_actual_used",
            "Bytes the volume allocates in its backing store",
            &vl,
            used as f64,
        );
    }
    f.gauge(
        "openebs_total_read_bytes",
        "Bytes read (cumulative; cStor's gauge)",
        &vl,
        c.read_bytes as f64,
    );
    f.gauge(
        "openebs_total_write_bytes",
        "Bytes written (cumulative; cStor's gauge)",
        &vl,
        c.write_bytes as f64,
    );
    f.gauge(
        "openebs_reads",
        "Read commands (cumulative; cStor's gauge)",
        &vl,
        c.read_ops as f64,
    );
    f.gauge(
        "openebs_writes",
        "Write commands (cumulative; cStor's gauge)",
        &vl,
        c.write_ops as f64,
    );
    f.gauge(
        "openebs_read_time",
        "Time spent in reads, nanoseconds (cumulative; cStor's gauge)",
        &vl,
        c.read_latency.sum_ns as f64,
    );
    f.gauge(
        "openebs_write_time",
        "Time spent in modifying commands, nanoseconds (cumulative; cStor's gauge)",
        &vl,
        c.write_latency.sum_ns as f64,
    );
    let mut up = vec![
        ("volName".to_owned(), t.labels.volume_name.clone()),
        ("castype".to_owned(), "cstor".to_owned()),
    ];
    up.extend(vl.iter().cloned());
    f.gauge(
        "openebs_volume_uptime",
        "Seconds since the target was added",
        &up,
        now.duration_since(added).as_secs_f64(),
    );
    f.counter(
        "openebs_volume_reads",
        "Read commands completed",
        &vl,
        c.read_ops,
    );
    f.counter(
        "openebs_volume_writes",
        "Write commands completed",
        &vl,
        c.write_ops,
    );
    f.counter("openebs_volume_read_bytes", "Bytes read", &vl, c.read_bytes);
    f.counter(
        "openebs_volume_write_bytes",
        "Bytes written",
        &vl,
        c.write_bytes,
    );
    f.counter(
        "openebs_volume_unmaps",
        "UNMAP and WRITE SAME with unmap commands completed",
        &vl,
        c.unmap_ops,
    );
    f.counter(
        "openebs_volume_flushes",
        "Cache flushes completed",
        &vl,
        c.flush_ops,
    );
    f.histogram(
        "openebs_volume_read_duration_seconds",
        "Latency of successful reads, from admission to completion, seconds",
        &vl,
        &c.read_latency,
    );
    f.histogram(
        "openebs_volume_write_duration_seconds",
        "Latency of successful modifying commands, seconds",
        &vl,
        &c.write_latency,
    );
    f.gauge(
        "openebs_volume_sessions",
        "iSCSI sessions logged in to the target",
        &vl,
        info.sessions as f64,
    );

    let Some(status) = replicated else {
        return;
    };
    let count = |mode: &[&str]| {
        status
            .replicas
            .iter()
            .filter(|r| mode.contains(&r.mode.as_str()))
            .count() as f64
    };
    f.gauge(
        "openebs_total_replica_count",
        "Members of the membership record",
        &vl,
        status.replicas.len() as f64,
    );
    f.gauge(
        "openebs_healthy_replica_count",
        "Members Current and connected",
        &vl,
        count(&["Healthy"]),
    );
    f.gauge(
        "openebs_degraded_replica_count",
        "Members connected but not Current (Stale, New, rebuilding)",
        &vl,
        count(&["Degraded", "Rebuilding"]),
    );
    f.gauge(
        "openebs_volume_offline_replicas",
        "Members not connected",
        &vl,
        count(&["Offline"]),
    );
    f.gauge(
        "openebs_volume_epoch",
        "Epoch of this target instance",
        &vl,
        status.epoch as f64,
    );
    f.gauge(
        "openebs_volume_io_checkpoint",
        "Io number at and below which every write completed",
        &vl,
        status.io_checkpoint as f64,
    );
    for r in &status.replicas {
        let mut rl = vl.clone();
        rl.push(("replica".to_owned(), r.id.clone()));
        rl.push(("address".to_owned(), r.address.clone()));
        f.gauge(
            "openebs_volume_replica_status",
            "Replica status: 0 Offline, 1 Healthy, 2 Degraded, 3 Rebuilding",
            &rl,
            replica_code(&r.mode),
        );
        let mut sl = rl.clone();
        sl.push(("state".to_owned(), r.state.clone()));
        f.gauge(
            "openebs_volume_replica_state",
            "1 for the member's recorded state (Current, Stale, New)",
            &sl,
            1.0,
        );
        f.gauge(
            "openebs_volume_replica_rebuild_progress_percent",
            "Catch-up progress of a member, percent (100 when Current)",
            &rl,
            r.rebuild_percent as f64,
        );
        f.gauge(
            "openebs_volume_replica_rebuild_done_bytes",
            "Bytes the member's running or last catch-up copied",
            &rl,
            r.rebuild_bytes_done as f64,
        );
        f.gauge(
            "openebs_volume_replica_rebuild_total_bytes",
            "Bytes the member's running or last catch-up has to copy",
            &rl,
            r.rebuild_bytes_total as f64,
        );
        if r.mode == "Rebuilding" {
            let key = format!("rebuild\0{}\0{}\0{}", t.iqn, r.id, r.rebuild_bytes_total);
            let rate = m.rate(key, r.rebuild_bytes_done, now).unwrap_or(0.0);
            f.gauge(
                "openebs_volume_replica_rebuild_rate_bytes_per_second",
                "Catch-up rate since the rebuild was first seen, bytes per second",
                &rl,
                rate,
            );
            if rate > 0.0 {
                let left = r.rebuild_bytes_total.saturating_sub(r.rebuild_bytes_done);
                f.gauge(
                    "openebs_volume_replica_rebuild_eta_seconds",
                    "Estimated seconds until the catch-up ends",
                    &rl,
                    left as f64 / rate,
                );
            }
        }
    }
}
