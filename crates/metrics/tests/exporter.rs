//! The exporter in-process over a real pool on temp files: latency gauges cover the last
//! interval only (0 after a scrape with no I/O, while the histograms keep counting), a
//! finished scrub shows its progress and bytes, a removed pool disappears, and the HTTP
//! endpoint serves the same exposition.

use std::io::{Read, Write};
use std::sync::Arc;

use cstor_metrics::Exporter;
use cstor_node::admin::{execute, Request};
use cstor_node::host::CreateOptions;
use cstor_node::registry::Registry;
use cstor_node::OpenPool;
use cstor_pool::spa::pool::{GroupKind, GroupSpec};
use cstor_pool::Compression;

/// The value of the one sample whose line starts with `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    let hits: Vec<&str> = text.lines().filter(|l| l.starts_with(series)).collect();
    assert_eq!(hits.len(), 1, "{series}: {hits:?}\n{text}");
    hits[0].rsplit_once(' ').unwrap().1.parse().unwrap()
}

fn pool(dir: &std::path::Path) -> Arc<OpenPool> {
    let registry = Registry::new(dir.join("home"));
    let mut devices = Vec::new();
    for i in 0..2 {
        let p = dir.join(format!("d{i}.img"));
        std::fs::File::create(&p)
            .unwrap()
            .set_len(128 << 20)
            .unwrap();
        devices.push(p.to_str().unwrap().to_owned());
    }
    let groups = [GroupSpec {
        kind: GroupKind::Mirror,
        devices,
        log: false,
    }];
    let opts = CreateOptions {
        compression: Compression::Off,
        ro_threshold_pct: 85,
        force: false,
    };
    Arc::new(OpenPool::create(&registry, "tank", &groups, &opts).unwrap())
}

#[test]
fn interval_latency_scrub_progress_and_removal() {
    let d = tempfile::tempdir().unwrap();
    let p = pool(d.path());
    let vol = p.engine().create_volume("v", 16 << 20, None, None).unwrap();
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    vol.write(0, &data, None).unwrap();
    p.engine().sync().unwrap();

    let e = Exporter::new();
    e.add_pool(p.clone());
    let first = e.render().unwrap();
    let pl = "{pool_name=\"tank\",pool=\"tank\"}";
    assert_eq!(value(&first, &format!("openebs_pool_status{pl}")), 1.0);
    assert!(value(&first, &format!("openebs_pool_write_latency{pl}")) > 0.0);
    let dev = d.path().join("d0.img");
    let dl = format!(
        "{{pool_name=\"tank\",pool=\"tank\",device=\"{}\"}}",
        dev.display()
    );
    let writes = value(
        &first,
        &format!("openebs_pool_write_duration_seconds_count{dl}"),
    );
    assert!(writes > 0.0);
    // No I/O since: the interval gauges drop to 0, the histogram keeps its count.
    let second = e.render().unwrap();
    assert_eq!(
        value(&second, &format!("openebs_pool_write_latency{pl}")),
        0.0
    );
    assert_eq!(
        value(&second, &format!("openebs_pool_write_latency{dl}")),
        0.0
    );
    assert_eq!(
        value(
            &second,
            &format!("openebs_pool_write_duration_seconds_count{dl}")
        ),
        writes
    );

    let mut none: &[u8] = &[];
    execute(
        &p,
        Request::PoolScrub { background: false },
        &mut none as &mut dyn Read,
        &mut std::io::sink() as &mut dyn Write,
        &mut |_| {},
    )
    .unwrap();
    let scanned = e.render().unwrap();
    let sl = "{pool_name=\"tank\",pool=\"tank\",kind=\"scrub\"}";
    assert_eq!(
        value(&scanned, &format!("openebs_pool_scan_active{sl}")),
        0.0
    );
    assert_eq!(
        value(&scanned, &format!("openebs_pool_scan_progress_percent{sl}")),
        100.0
    );
    assert!(value(&scanned, &format!("openebs_pool_scan_examined_bytes{sl}")) >= 4.0 * 1048576.0);
    let vl = "{name=\"tank/v\",pool_name=\"tank\",pool=\"tank\",vol=\"v\"}";
    assert!(value(&scanned, &format!("openebs_volume_replica_used_size{vl}")) >= 4.0 * 1048576.0);

    // The endpoint serves the same families.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = rt.block_on(async {
        let srv = e.serve("127.0.0.1:0").await.unwrap();
        let addr = srv.local_addr();
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap()
    });
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    assert!(
        served.contains("openebs_pool_status{pool_name=\"tank\""),
        "{served}"
    );

    e.remove_pool("tank");
    assert_eq!(e.render().unwrap().trim(), "# EOF");
    drop(vol);
}
