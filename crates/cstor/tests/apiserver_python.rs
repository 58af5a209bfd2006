//! The official Kubernetes Python client (PyPI `kubernetes`, installed by
//! `scripts/lib.sh` `ensure_python_clients`) against a `cstor apiserver` process, as a
//! second opinion on the protocol from a client that is not ours: list, paging, watch
//! from a resourceVersion, three patch flavours, 409 on a stale update
//! (fixtures/apiserver/python_client.py says what it checks). Fails when CI is set and
//! the client is missing; skips with a message otherwise.

mod apiserver_support;

use std::process::Command;

use apiserver_support::{fixture, free_port, required, ApiServer};

fn have_python_client() -> bool {
    Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn python_client_lists_watches_and_patches() {
    if !required(
        have_python_client(),
        "python3 with the `kubernetes` package (scripts/lib.sh ensure_python_clients)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = ApiServer::start(&dir.path().join("data"), free_port());
    let out = Command::new("python3")
        .arg(fixture("python_client.py"))
        .arg(s.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
