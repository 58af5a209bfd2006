//! The initiator across a target restart: writes outstanding when `cstor target serve` is
//! killed complete after it comes back on the same port (re-issued on a new session), with
//! the data intact; with the target gone longer than the replacement timeout, I/O fails
//! with an error, and works again once the target is back.

mod initiator_support;

use cstor_initiator::{Error, LoginSpec, Session, SessionOptions};
use initiator_support::{free_addr, pattern, Pool, INI};
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-12.io.cstor.test:ini-reconnect";

fn spec(addr: &str) -> LoginSpec {
    LoginSpec {
        portal: addr.to_owned(),
        target_iqn: IQN.to_owned(),
        initiator_iqn: INI.to_owned(),
        chap: None,
        lun: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outstanding_writes_complete_after_target_restart() {
    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/v", "--size", "64M"]);
    let addr = free_addr();
    let serve_args = ["--iqn", IQN, "--volume", "ip/v"];
    let target = pool.serve(&addr, &serve_args);
    let opts = SessionOptions {
        replacement_timeout: Duration::from_secs(90),
        ..SessionOptions::default()
    };
    let s = Session::login_with(&spec(&addr), opts)
        .await
        .expect("login");
    let bs = u64::from(s.capacity().block_size);
    // Durable before the crash.
    let base = pattern(4 << 20, 1);
    s.write(0, &base).await.expect("write");
    s.flush().await.expect("flush");

    // The target stops answering (SIGSTOP), so the writes below stay outstanding; then
    // it dies with them.
    target.signal(libc::SIGSTOP);
    let sizes = [
        4096usize,
        256 * 1024,
        1 << 20,
        (2 << 20) + 4096,
        3 << 20,
        65536,
    ];
    let mut writers = Vec::new();
    for (i, len) in sizes.iter().enumerate() {
        let s = s.clone();
        let len = *len;
        writers.push(tokio::spawn(async move {
            let off = (8u64 << 20) + (i as u64) * (4 << 20);
            s.write(off / bs, &pattern(len, 10 + i as u64)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "a write finished while the target was stopped"
    );
    // SIGKILL while still stopped: the old process never runs again, so it cannot
    // answer (and then lose, being killed before a commit) any of those writes.
    target.signal(libc::SIGKILL);
    target.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _target = pool.serve(&addr, &serve_args);

    for (i, w) in writers.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("write did not complete after the restart")
            .expect("writer task");
        assert!(r.is_ok(), "write {i} failed: {r:?}");
    }
    s.flush().await.expect("flush after the restart");
    let st = s.stats();
    assert!(st.reconnects >= 1 && st.reissued >= 1, "{st:?}");
    let mut back = vec![0u8; 4 << 20];
    s.read(0, &mut back).await.expect("read");
    assert!(back == base, "data flushed before the crash changed");
    for (i, len) in sizes.iter().enumerate() {
        let off = (8u64 << 20) + (i as u64) * (4 << 20);
        let mut back = vec![0u8; *len];
        s.read(off / bs, &mut back).await.expect("read");
        assert!(back == pattern(*len, 10 + i as u64), "write {i} not intact");
    }
    s.logout().await.expect("logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_fails_after_the_replacement_timeout_and_recovers_later() {
    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/v", "--size", "16M"]);
    let addr = free_addr();
    let serve_args = ["--iqn", IQN, "--volume", "ip/v"];
    let target = pool.serve(&addr, &serve_args);
    let timeout = Duration::from_secs(2);
    let opts = SessionOptions {
        replacement_timeout: timeout,
        ..SessionOptions::default()
    };
    let s = Session::login_with(&spec(&addr), opts)
        .await
        .expect("login");
    s.write(0, &pattern(4096, 1)).await.expect("write");
    target.kill();

    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), s.write(0, &pattern(4096, 2)))
        .await
        .expect("the write hung past the replacement timeout")
        .unwrap_err();
    assert!(matches!(err, Error::ReplacementTimeout { .. }), "{err}");
    // Not before the timeout: I/O is queued that long.
    assert!(
        started.elapsed() >= timeout - Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let err = s.flush().await.unwrap_err();
    assert!(matches!(err, Error::ReplacementTimeout { .. }), "{err}");

    // Reconnecting goes on in the background: with the target back, I/O works again.
    let _target = pool.serve(&addr, &serve_args);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match s.write(0, &pattern(4096, 3)).await {
            Ok(()) => break,
            Err(Error::ReplacementTimeout { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    }
    let mut back = vec![0u8; 4096];
    s.read(0, &mut back).await.expect("read");
    assert_eq!(back, pattern(4096, 3));
    s.logout().await.expect("logout");
}

/// A target that moves to another portal (a replicated volume's target off a dead node):
/// the session's reconnect tries its alternate portals in turn, one without the target
/// refuses the login, and the writes queued meanwhile complete at the new portal. A first
/// login whose main portal is dead goes to an alternate too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_follows_its_target_to_an_alternate_portal() {
    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/v", "--size", "16M"]);
    // Another node's pool (one process serves a pool at a time).
    let elsewhere = Pool::new();
    elsewhere.cstor(&["volume", "create", "ip/w", "--size", "16M"]);
    let (first, other, moved) = (free_addr(), free_addr(), free_addr());
    let serve_args = ["--iqn", IQN, "--volume", "ip/v"];
    let target = pool.serve(&first, &serve_args);
    // A portal serving another target only: it refuses our login.
    let _other = elsewhere.serve(
        &other,
        &[
            "--iqn",
            "iqn.2026-12.io.cstor.test:other",
            "--volume",
            "ip/w",
        ],
    );
    let alternates = [other.clone(), moved.clone()];
    let s = Session::login_any(&spec(&first), SessionOptions::default(), &alternates)
        .await
        .expect("login");
    s.write(0, &pattern(4096, 1)).await.expect("write");
    s.flush().await.expect("flush");
    target.kill();
    let pending = {
        let s = s.clone();
        tokio::spawn(async move { s.write(8, &pattern(4096, 2)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "a write completed with no target");
    let _moved = pool.serve(&moved, &serve_args);
    tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("the write did not complete at the new portal")
        .expect("writer task")
        .expect("write");
    let mut back = vec![0u8; 8192];
    s.read(0, &mut back[..4096]).await.expect("read");
    s.read(8, &mut back[4096..]).await.expect("read");
    assert_eq!(&back[..4096], &pattern(4096, 1)[..]);
    assert_eq!(&back[4096..], &pattern(4096, 2)[..]);
    assert!(s.stats().reconnects >= 1, "{:?}", s.stats());
    s.logout().await.expect("logout");

    // A first login at a dead portal goes on to an alternate.
    let s = Session::login_any(
        &spec(&first),
        SessionOptions::default(),
        std::slice::from_ref(&moved),
    )
    .await
    .expect("login through the alternate");
    s.logout().await.expect("logout");
    // With every portal refusing, the error is the main portal's (nothing listens there),
    // not the other portal's refusal of an unknown target.
    let e = Session::login_any(
        &spec(&first),
        SessionOptions::default(),
        std::slice::from_ref(&other),
    )
    .await
    .unwrap_err();
    let alone = Session::login_with(&spec(&first), SessionOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), alone.to_string());
}

/// A target that hangs rather than dies (its node stopped or cut off: TCP is accepted, or
/// SYNs dropped, and nothing answers) while it moves to another portal: the reconnect
/// tries the next portal after a short stagger instead of sitting out the whole login
/// timeout on the hung one, and the write queued meanwhile completes at the new portal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_portal_costs_a_reconnect_seconds_not_the_login_timeout() {
    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/v", "--size", "16M"]);
    let (first, moved) = (free_addr(), free_addr());
    let serve_args = ["--iqn", IQN, "--volume", "ip/v"];
    let target = pool.serve(&first, &serve_args);
    let opts = SessionOptions {
        command_timeout: Duration::from_secs(2),
        ..SessionOptions::default()
    };
    assert!(opts.login_timeout >= Duration::from_secs(10));
    let s = Session::login_any(&spec(&first), opts, std::slice::from_ref(&moved))
        .await
        .expect("login");
    s.write(0, &pattern(4096, 1)).await.expect("write");
    s.flush().await.expect("flush");
    // Stopped, not killed: its socket still accepts connections and never answers. The
    // pool is taken over by the moved target (the old process can never run again).
    target.signal(libc::SIGSTOP);
    let hung = Instant::now();
    let pending = {
        let s = s.clone();
        tokio::spawn(async move { s.write(8, &pattern(4096, 2)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    target.signal(libc::SIGKILL);
    target.kill();
    let listener = std::net::TcpListener::bind(&first).expect("hold the old portal");
    let _moved = pool.serve(&moved, &serve_args);
    tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("the write did not complete at the new portal")
        .expect("writer task")
        .expect("write");
    let took = hung.elapsed();
    eprintln!("write completed {took:?} after the target hung");
    assert!(
        took < opts.login_timeout,
        "the reconnect sat out the hung portal's login timeout: {took:?}"
    );
    let mut back = vec![0u8; 4096];
    s.read(8, &mut back).await.expect("read");
    assert_eq!(back, pattern(4096, 2));
    s.logout().await.expect("logout");
    drop(listener);
}
