//! Chromium's sandbox: on for every user but root. The tests run as root here, so the sandboxed case runs
//! this test binary again as `nobody` (with `setpriv`) and reads what it saw.

use std::process::Command;

use agent::browser::{Sandbox, Visitor};
use axum::Router;
use axum::response::Html;
use axum::routing::get;

use super::chromium::renderers_of;
use super::helpers::Fixture;
use super::visit::{loopback_allowed, settings};

/// Marks the child run, so the ignored half runs only when the parent starts it.
const CHILD_ENV: &str = "EUGLENA_SANDBOX_CHILD";
/// The line the child prints its findings on.
const REPORT: &str = "SANDBOX-REPORT ";

/// Seccomp mode (0 none, 2 filter) of each renderer of Chromium's `browser_pid`.
fn renderer_seccomp_modes(browser_pid: u32) -> Vec<String> {
    renderers_of(browser_pid)
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .map(|mode| mode.trim().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn as_a_non_root_user_chromium_runs_in_its_sandbox_and_renders_the_page() {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "web::sandbox::child_visits_a_page_and_reports_the_sandbox",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .env("HOME", "/tmp")
        .output()
        .expect("setpriv runs (util-linux)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child failed: {stdout}\n{stderr}"
    );
    let report: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix(REPORT))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap_or_else(|| panic!("no report from the child: {stdout}\n{stderr}"));

    assert_ne!(report["euid"], 0, "{report}");
    assert_eq!(report["sandbox"], "On", "{report}");
    assert_eq!(report["text"], "sandboxed-42", "{report}");
    assert_eq!(report["no_sandbox_flag"], false, "{report}");
    let modes = report["renderer_seccomp"].as_array().unwrap();
    assert!(!modes.is_empty(), "no renderer seen: {report}");
    assert!(
        modes.iter().all(|m| m == "2"),
        "every renderer runs under a seccomp filter: {report}"
    );
}

/// The child half: visits a page as whoever runs it and prints what it found.
#[tokio::test]
#[ignore = "started by as_a_non_root_user_chromium_runs_in_its_sandbox_and_renders_the_page"]
async fn child_visits_a_page_and_reports_the_sandbox() {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "run only as the child of the sandbox test"
    );
    let pages = Fixture::spawn(Router::new().route(
        "/",
        get(|| async {
            Html("<body><script>document.body.innerText = 'sandboxed-' + (6*7)</script></body>")
        }),
    ))
    .await;
    let visitor = Visitor::new(settings(), loopback_allowed());
    let mut session = visitor.session();
    let text = session.visit(&pages.url("/")).await.map(|p| p.text);
    // Read the processes while the browser still runs.
    let pid = visitor.browser_pid().await;
    let cmdline = pid
        .and_then(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .unwrap_or_default();
    let modes = pid.map(renderer_seccomp_modes).unwrap_or_default();
    let euid = std::fs::metadata("/proc/self")
        .map_or(u32::MAX, |m| std::os::unix::fs::MetadataExt::uid(&m));
    println!(
        "{REPORT}{}",
        serde_json::json!({
            "euid": euid,
            "sandbox": format!("{:?}", Sandbox::for_this_process()),
            "text": text.unwrap_or_else(|e| format!("error: {e}")),
            "browser_pid": pid,
            "no_sandbox_flag": cmdline.contains("--no-sandbox"),
            "renderer_seccomp": modes,
        })
    );
    session.close().await;
    visitor.shutdown().await;
}
