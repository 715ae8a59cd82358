//! `euglena` run as a process against the real fleet (gateway, agent, Redis, RabbitMQ, the fixture model):
//! what it prints and the code it exits with.

#[path = "../../../tests/tests/e2e/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use euglena_tests::model::Reply;
use euglena_tests::proxy::Proxy;
use euglena_tests::supabase::FakeSupabase;
use helpers::{Fleet, spawn_fleet};
use serde_json::{Value, json};
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;
use uuid::Uuid;

/// `euglena` with `args` against `url`, with `token` (none when `None`), and a home of its own.
fn euglena(url: &str, token: Option<&str>, home: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_euglena"));
    command
        .args(args)
        .env("EUGLENA_URL", url)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("EUGLENA_TOKEN")
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env("EUGLENA_TOKEN", token);
    }
    command
}

async fn run(fleet: &Fleet, home: &std::path::Path, args: &[&str]) -> Output {
    let token = fleet.token("alice");
    tokio::time::timeout(
        Duration::from_secs(90),
        euglena(&fleet.gateway, Some(&token), home, args).output(),
    )
    .await
    .expect("euglena ends")
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_with_wait_follows_the_task_and_exits_0_with_its_result() {
    let fleet = spawn_fleet(&[]).await;
    let home = tempfile::tempdir().unwrap();
    let marker = format!("cli-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("THINK", "", json!({"deliverable": "forty-two"})),
            Reply::action("EXIT", "", json!({})),
            Reply::synthesis("The answer was found.", &["forty-two"]),
        ],
    );

    let output = run(
        &fleet,
        home.path(),
        &[
            "submit",
            &format!("find the answer {marker}"),
            "--max-ticks",
            "5",
            "--wait",
        ],
    )
    .await;

    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("status   completed (tick 2 of 5)"),
        "{stdout}"
    );
    assert!(stdout.contains("The answer was found."), "{stdout}");
    assert!(stdout.contains("  - forty-two"), "{stdout}");

    let again = format!("cli-{}", Uuid::new_v4());
    fleet.model.script(
        &again,
        vec![
            Reply::action("EXIT", "", json!({})),
            Reply::synthesis("Again.", &[]),
        ],
    );
    let json = run(
        &fleet,
        home.path(),
        &["--json", "submit", &format!("again {again}"), "--wait"],
    )
    .await;
    assert_eq!(json.status.code(), Some(0));
    let task: Value = serde_json::from_slice(&json.stdout).expect("--json prints JSON only");
    assert_eq!(task["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_exits_1_and_a_cancelled_one_3() {
    let fleet = spawn_fleet(&[]).await;
    let home = tempfile::tempdir().unwrap();
    let garbage = format!("cli-{}", Uuid::new_v4());
    fleet
        .model
        .script(&garbage, vec![Reply::Text("not json".into())]);
    let failed = run(
        &fleet,
        home.path(),
        &[
            "submit",
            &format!("m {garbage}"),
            "--max-ticks",
            "2",
            "--wait",
        ],
    )
    .await;
    assert_eq!(failed.status.code(), Some(1));
    assert!(text(&failed.stdout).contains("no usable answer"));

    let slow = format!("cli-{}", Uuid::new_v4());
    fleet.model.script(
        &slow,
        vec![
            Reply::action("THINK", "", json!({"deliverable": "partial"})),
            Reply::Delayed(
                Duration::from_secs(60),
                Box::new(Reply::action("EXIT", "", json!({}))),
            ),
        ],
    );
    let submitted = run(&fleet, home.path(), &["submit", &format!("m {slow}")]).await;
    assert_eq!(submitted.status.code(), Some(0));
    let id = text(&submitted.stdout).trim().to_owned();
    let watcher = euglena(
        &fleet.gateway,
        Some(&fleet.token("alice")),
        home.path(),
        &["watch", &id],
    )
    .output();
    let watching = tokio::spawn(watcher);
    // Let the watcher see the first tick, then cancel from another process.
    let started = std::time::Instant::now();
    while fleet.model.requests_for(&slow).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = run(&fleet, home.path(), &["cancel", &id]).await;
    assert_eq!(cancelled.status.code(), Some(0));
    assert!(
        text(&cancelled.stdout).contains("cancelling")
            || text(&cancelled.stdout).contains("cancelled")
    );

    let watched = tokio::time::timeout(Duration::from_secs(30), watching)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(watched.status.code(), Some(3), "{}", text(&watched.stderr));
    let stdout = text(&watched.stdout);
    assert!(stdout.contains("status   cancelled"), "{stdout}");
    assert!(stdout.contains("  - partial"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_list_and_agents_print_what_the_gateway_says_in_text_and_json() {
    let fleet = spawn_fleet(&[]).await;
    let home = tempfile::tempdir().unwrap();
    let marker = format!("cli-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("EXIT", "", json!({})),
            Reply::synthesis("done", &[]),
        ],
    );
    let id = fleet.submit("alice", &format!("listed {marker}"), 3).await;
    fleet
        .wait_terminal("alice", &id, Duration::from_secs(60))
        .await;

    let status = run(&fleet, home.path(), &["status", &id]).await;
    assert_eq!(status.status.code(), Some(0));
    assert!(text(&status.stdout).contains(&format!("Task {id}")));

    let list = run(&fleet, home.path(), &["list", "--status", "completed"]).await;
    let listed = text(&list.stdout);
    assert!(listed.starts_with("ID"), "{listed}");
    assert!(
        listed.contains(&id) && listed.contains("completed"),
        "{listed}"
    );
    let json = run(&fleet, home.path(), &["--json", "list", "--limit", "5"]).await;
    let tasks: Vec<Value> = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(tasks[0]["correlation_id"], id.as_str());

    let agents = run(&fleet, home.path(), &["agents"]).await;
    assert_eq!(
        text(&agents.stdout),
        "1 agent live; 0 tasks waiting, 0 being worked on\n"
    );
    let figures: Value =
        serde_json::from_slice(&run(&fleet, home.path(), &["--json", "agents"]).await.stdout)
            .unwrap();
    assert_eq!(figures["agents"], 1);

    let missing = run(
        &fleet,
        home.path(),
        &["status", &Uuid::new_v4().to_string()],
    )
    .await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("No such task"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_missing_token_exits_2_saying_what_to_do_and_a_bad_command_line_too() {
    let fleet = spawn_fleet(&[]).await;
    let home = tempfile::tempdir().unwrap();
    let refused = euglena(&fleet.gateway, Some("not-a-token"), home.path(), &["list"])
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("euglena login"),
        "{}",
        text(&refused.stderr)
    );
    let none = euglena(&fleet.gateway, None, home.path(), &["list"])
        .output()
        .await
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(text(&none.stderr).contains("No token"));
    let usage = run(&fleet, home.path(), &["submit"]).await;
    assert_eq!(usage.status.code(), Some(2), "clap's usage error");
    let zero = run(&fleet, home.path(), &["submit", "m", "--max-ticks", "0"]).await;
    assert_eq!(zero.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandate_over_the_quota_exits_1_with_the_ticks_that_remain() {
    let fleet = spawn_fleet(&[("DAILY_TICK_LIMIT", "10")]).await;
    let home = tempfile::tempdir().unwrap();
    let refused = run(&fleet, home.path(), &["submit", "big", "--max-ticks", "50"]).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("10 remain"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_going_away_mid_watch_does_not_lose_the_task() {
    let fleet = spawn_fleet(&[]).await;
    let home = tempfile::tempdir().unwrap();
    let marker = format!("cli-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("THINK", "", json!({})),
            Reply::Delayed(
                Duration::from_secs(3),
                Box::new(Reply::action("EXIT", "", json!({"deliverable": "made it"}))),
            ),
            Reply::synthesis("done despite the outage", &["made it"]),
        ],
    );
    let mut proxy = Proxy::start(fleet.gateway.trim_start_matches("http://")).await;
    let through = format!("http://{}", proxy.address());
    let id = fleet.submit("alice", &format!("m {marker}"), 5).await;
    let watching = tokio::spawn(
        euglena(
            &through,
            Some(&fleet.token("alice")),
            home.path(),
            &["watch", &id],
        )
        .output(),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore().await;

    let watched = tokio::time::timeout(Duration::from_secs(60), watching)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(watched.status.code(), Some(0), "{}", text(&watched.stderr));
    assert!(text(&watched.stdout).contains("done despite the outage"));
}

/// Waits until process `pid` has installed its SIGINT handler (bit 2 of `SigCgt` in `/proc/{pid}/status`), so a
/// test's interrupt reaches the handler and not the default action that kills a process just started.
fn wait_until_it_catches_sigint(pid: u32) {
    let started = std::time::Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let caught = status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (SIGINT - 1)) != 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the CLI never installed its SIGINT handler"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGINT's number on Linux.
const SIGINT: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_detaches_and_the_task_goes_on_unless_asked_to_cancel_it() {
    let fleet = spawn_fleet(&[]).await;
    let home = tempfile::tempdir().unwrap();
    let marker = format!("cli-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("THINK", "", json!({"deliverable": "so far"})),
            Reply::Delayed(
                Duration::from_secs(4),
                Box::new(Reply::action("EXIT", "", json!({}))),
            ),
            Reply::synthesis("finished after the detach", &["so far"]),
        ],
    );
    let interrupt = |child: &tokio::process::Child| {
        let pid = child.id().unwrap();
        wait_until_it_catches_sigint(pid);
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
    };
    let token = fleet.token("alice");

    let id = fleet.submit("alice", &format!("detach {marker}"), 5).await;
    let mut child = euglena(&fleet.gateway, Some(&token), home.path(), &["watch", &id])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    interrupt(&child);
    let detached = child.wait().await.unwrap();
    assert_eq!(detached.code(), Some(130));
    let task = fleet
        .wait_terminal("alice", &id, Duration::from_secs(60))
        .await;
    assert_eq!(task["status"], "completed", "the task went on: {task}");

    let other = format!("cli-{}", Uuid::new_v4());
    fleet.model.script(
        &other,
        vec![
            Reply::action("THINK", "", json!({"deliverable": "kept"})),
            Reply::Delayed(
                Duration::from_secs(60),
                Box::new(Reply::action("EXIT", "", json!({}))),
            ),
        ],
    );
    let id = fleet.submit("alice", &format!("cancel {other}"), 5).await;
    let child = euglena(
        &fleet.gateway,
        Some(&token),
        home.path(),
        &["watch", &id, "--cancel-on-interrupt"],
    )
    .spawn()
    .unwrap();
    let started = std::time::Instant::now();
    while fleet.model.requests_for(&other).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    interrupt(&child);
    let cancelled = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.status.code(), Some(3));
    assert_eq!(
        fleet
            .wait_terminal("alice", &id, Duration::from_secs(10))
            .await["status"],
        "cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_a_session_only_its_owner_can_read_and_later_commands_use_it() {
    use std::os::unix::fs::PermissionsExt;
    let secret = format!("secret-{}", Uuid::new_v4());
    let supabase = FakeSupabase::start(&secret, Duration::from_secs(3600)).await;
    let fleet = spawn_fleet(&[
        ("SUPABASE_JWT_SECRET", &secret),
        ("SUPABASE_URL", &supabase.url),
        ("SUPABASE_ANON_KEY", "anon-public-key"),
    ])
    .await;
    let home = tempfile::tempdir().unwrap();
    let login = |password: &'static str| {
        let mut command = euglena(
            &fleet.gateway,
            None,
            home.path(),
            &["login", "--email", "ada@example.org", "--password-stdin"],
        );
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        async move {
            let mut child = command.spawn().unwrap();
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(format!("{password}\n").as_bytes())
                .await
                .unwrap();
            drop(stdin);
            child.wait_with_output().await.unwrap()
        }
    };

    let wrong = login("wrong").await;
    assert_eq!(wrong.status.code(), Some(2));
    assert!(text(&wrong.stderr).contains("Invalid login credentials"));

    let signed_in = login("correct horse").await;
    assert_eq!(
        signed_in.status.code(),
        Some(0),
        "{}",
        text(&signed_in.stderr)
    );
    let session = home.path().join(".config/euglena/session.json");
    let mode = std::fs::metadata(&session).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the session is readable by its owner only");

    let agents = euglena(&fleet.gateway, None, home.path(), &["agents"])
        .output()
        .await
        .unwrap();
    assert_eq!(agents.status.code(), Some(0), "{}", text(&agents.stderr));
    let logout = euglena(&fleet.gateway, None, home.path(), &["logout"])
        .output()
        .await
        .unwrap();
    assert_eq!(logout.status.code(), Some(0));
    assert!(!session.exists());
}
