//! Chromium's sandbox: on for every user but root, and able to start inside a container that runs the
//! agent's seccomp profile (`docker/agent-seccomp.json`). The tests run as root here, so each case runs
//! this test binary again as a child (as `nobody`, with `setpriv`, where the case needs it); the child
//! installs the case's seccomp filter on itself as a real kernel filter, which everything it starts
//! inherits, and prints what it saw.

use std::process::Command;

use agent::browser::{Sandbox, Visitor};
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::chromium::renderers_of;
use super::helpers::Fixture;
use super::visit::{loopback_allowed, settings};

/// Marks a child run and names the filter it installs: `none`, `profile` (the agent's seccomp profile) or
/// `no-user-namespaces` (what container runtimes' default profiles do to user namespaces).
const CHILD_ENV: &str = "EUGLENA_SANDBOX_CHILD";
/// The line a child prints its findings on.
const REPORT: &str = "SANDBOX-REPORT ";
/// The agent's seccomp profile, in Docker's format.
const PROFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/agent-seccomp.json");

fn arch() -> TargetArch {
    std::env::consts::ARCH
        .try_into()
        .expect("seccompiler supports this architecture")
}

/// Compiles a Docker seccomp profile into BPF programs, one per rule (each with its own errno), to be
/// installed together. Handles what the agent's profile uses: a default of allow, and rules that refuse
/// syscalls by name with an errno; anything else fails the test rather than being read loosely.
fn compile_docker_profile(path: &str) -> Vec<BpfProgram> {
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ALLOW", "{path}");
    let rules = profile["syscalls"].as_array().expect("a syscalls list");
    assert!(!rules.is_empty(), "{path} refuses nothing");
    rules
        .iter()
        .map(|rule| {
            assert_eq!(rule["action"], "SCMP_ACT_ERRNO", "{rule}");
            assert!(rule.get("args").is_none(), "argument filters: {rule}");
            let errno = rule["errnoRet"].as_u64().expect("errnoRet");
            let names: Vec<serde_json::Value> = rule["names"]
                .as_array()
                .expect("names")
                .iter()
                .map(|name| serde_json::json!({ "syscall": name }))
                .collect();
            let filter = serde_json::json!({
                "rule": {
                    "mismatch_action": "allow",
                    "match_action": { "errno": errno },
                    "filter": names,
                }
            });
            let mut programs =
                seccompiler::compile_from_json(filter.to_string().as_bytes(), arch())
                    .unwrap_or_else(|e| panic!("{rule}: {e}"));
            programs.remove("rule").unwrap()
        })
        .collect()
}

/// What container runtimes' default profiles do to a process without `CAP_SYS_ADMIN`: `unshare` and a
/// `clone` that asks for a new user namespace fail with EPERM, and `clone3` (whose flags a filter cannot
/// read) with ENOSYS, so the C library falls back to `clone`.
fn no_user_namespaces() -> Vec<BpfProgram> {
    let clone_newuser = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_NEWUSER as u64),
        libc::CLONE_NEWUSER as u64,
    )
    .unwrap();
    let refuse = |rules: Vec<(i64, Vec<SeccompRule>)>, errno: i32| -> BpfProgram {
        SeccompFilter::new(
            rules.into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch(),
        )
        .unwrap()
        .try_into()
        .unwrap()
    };
    vec![
        refuse(
            vec![
                (libc::SYS_unshare, vec![]),
                (
                    libc::SYS_clone,
                    vec![SeccompRule::new(vec![clone_newuser]).unwrap()],
                ),
            ],
            libc::EPERM,
        ),
        refuse(vec![(libc::SYS_clone3, vec![])], libc::ENOSYS),
    ]
}

/// Runs the ignored test `child` of this module in a new process, as `nobody` when `as_nobody`, telling it to
/// install `filter` first, and returns the JSON it reported.
fn run_child(child: &str, as_nobody: bool, filter: &str) -> serde_json::Value {
    let exe = std::env::current_exe().unwrap();
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let output = command
        .args([
            "--exact",
            &format!("web::sandbox::{child}"),
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, filter)
        .env("HOME", "/tmp")
        .output()
        .expect("the child starts (setpriv: util-linux)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child failed: {stdout}\n{stderr}"
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(REPORT))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap_or_else(|| panic!("no report from the child: {stdout}\n{stderr}"))
}

/// In a child: installs the filter its parent named on every thread of this process, so Chromium and
/// anything else started from here on inherits it.
fn install_the_childs_filter() {
    let Some(name) = std::env::var(CHILD_ENV).ok() else {
        panic!("run only as the child of a sandbox test");
    };
    let filters = match name.as_str() {
        "none" => return,
        "profile" => compile_docker_profile(PROFILE),
        "no-user-namespaces" => no_user_namespaces(),
        other => panic!("unknown filter {other}"),
    };
    for filter in &filters {
        seccompiler::apply_filter_all_threads(filter).expect("install the seccomp filter");
    }
}

/// Asserts that the child visited the JavaScript page in a sandboxed Chromium.
fn assert_sandboxed_render(report: &serde_json::Value) {
    assert_ne!(report["euid"], 0, "{report}");
    assert_eq!(report["sandbox"], "On", "{report}");
    assert_eq!(report["launch"], "ok", "{report}");
    assert_eq!(report["text"], "sandboxed-42", "{report}");
    assert_eq!(report["no_sandbox_flag"], false, "{report}");
    let modes = report["renderer_seccomp"].as_array().unwrap();
    assert!(!modes.is_empty(), "no renderer seen: {report}");
    assert!(
        modes.iter().all(|m| m == "2"),
        "every renderer runs under Chromium's seccomp filter: {report}"
    );
}

#[tokio::test]
async fn as_a_non_root_user_chromium_runs_in_its_sandbox_and_renders_the_page() {
    let report = run_child("child_visits_a_page_and_reports_the_sandbox", true, "none");
    assert_sandboxed_render(&report);
    assert_eq!(
        report["own_seccomp"], "0",
        "no filter was asked for: {report}"
    );
}

#[tokio::test]
async fn under_the_agents_seccomp_profile_chromium_keeps_its_sandbox() {
    let report = run_child(
        "child_visits_a_page_and_reports_the_sandbox",
        true,
        "profile",
    );
    assert_eq!(
        report["own_seccomp"], "2",
        "the profile is in force: {report}"
    );
    assert_sandboxed_render(&report);
}

#[tokio::test]
async fn where_user_namespaces_are_refused_chromium_cannot_sandbox_and_the_agent_says_why() {
    let report = run_child(
        "child_visits_a_page_and_reports_the_sandbox",
        true,
        "no-user-namespaces",
    );
    assert_eq!(report["own_seccomp"], "2", "{report}");
    let launch = report["launch"].as_str().unwrap();
    assert!(
        launch.starts_with("Chromium cannot start its sandbox")
            && launch.contains("docker/agent-seccomp.json"),
        "{report}"
    );
    // No Chromium ran without its sandbox: the visit fell back to plain HTTP, which runs no script.
    assert_eq!(report["browser_pid"], serde_json::Value::Null, "{report}");
    assert_eq!(report["text"], "static", "{report}");
}

#[tokio::test]
async fn the_agents_seccomp_profile_refuses_what_it_lists_even_to_root() {
    let open = run_child("child_probes_refused_system_calls", false, "none");
    let filtered = run_child("child_probes_refused_system_calls", false, "profile");
    assert_eq!(open["euid"], 0, "{open}");
    for probe in ["mount", "setns", "clock_settime"] {
        let (open, filtered) = (&open[probe], &filtered[probe]);
        // As root and unfiltered each probe fails on its arguments, not for want of permission...
        assert!(
            open.is_i64() && open != libc::EPERM,
            "{probe} without the profile: {open}"
        );
        // ...and under the profile it never reaches the kernel's argument checks.
        assert_eq!(filtered, libc::EPERM, "{probe} under the profile");
    }
}

/// The child half of the refusal test: makes three calls the profile refuses, each with arguments that
/// make it fail harmlessly where it is allowed, and reports each errno.
#[test]
#[ignore = "started by the_agents_seccomp_profile_refuses_what_it_lists_even_to_root"]
fn child_probes_refused_system_calls() {
    install_the_childs_filter();
    let errno = |result: rustix::io::Result<()>| match result {
        Ok(()) => serde_json::Value::from("succeeded"),
        Err(e) => serde_json::Value::from(e.raw_os_error()),
    };
    // A tmpfs on a mount point that does not exist: ENOENT.
    let mount = rustix::mount::mount(
        "none",
        "/nonexistent-euglena-mount-point",
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    );
    // Joining the "namespace" of /dev/null, which is none: EINVAL.
    let null = std::fs::File::open("/dev/null").unwrap();
    let setns = rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(&null), None);
    // Setting the monotonic clock, which no one may: EINVAL.
    let clock = rustix::time::clock_settime(
        rustix::time::ClockId::Monotonic,
        rustix::time::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        },
    );
    println!(
        "{REPORT}{}",
        serde_json::json!({
            "euid": effective_uid(),
            "mount": errno(mount),
            "setns": errno(setns),
            "clock_settime": errno(clock),
        })
    );
}

/// This process's effective user id: `/proc/self` belongs to it.
fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

/// Seccomp mode (0 none, 2 filter) of process `pid`.
fn seccomp_mode(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|mode| mode.trim().to_owned())
}

/// The child half of the Chromium cases: launches the browser, visits a page as whoever runs it, and
/// prints what it found.
#[tokio::test]
#[ignore = "started by the sandbox tests"]
async fn child_visits_a_page_and_reports_the_sandbox() {
    install_the_childs_filter();
    let pages = Fixture::spawn(Router::new().route(
        "/",
        get(|| async {
            Html("<body><p>static</p><script>document.body.innerText = 'sandboxed-' + (6*7)</script></body>")
        }),
    ))
    .await;
    let visitor = Visitor::new(settings(), loopback_allowed());
    let launch = match visitor.warm_up().await {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    let mut session = visitor.session();
    let text = session.visit(&pages.url("/")).await.map(|p| p.text);
    // Read the processes while the browser still runs.
    let pid = visitor.browser_pid().await;
    let cmdline = pid
        .and_then(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .unwrap_or_default();
    let modes: Vec<String> = pid
        .map(renderers_of)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pid| seccomp_mode(&pid.to_string()))
        .collect();
    println!(
        "{REPORT}{}",
        serde_json::json!({
            "euid": effective_uid(),
            "own_seccomp": seccomp_mode("self"),
            "sandbox": format!("{:?}", Sandbox::for_this_process()),
            "launch": launch,
            "text": text.unwrap_or_else(|e| format!("error: {e}")),
            "browser_pid": pid,
            "no_sandbox_flag": cmdline.contains("--no-sandbox"),
            "renderer_seccomp": modes,
        })
    );
    session.close().await;
    visitor.shutdown().await;
}
