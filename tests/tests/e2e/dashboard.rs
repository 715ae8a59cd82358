//! The dashboard in real headless Chromium against the real fleet (fixture model): sign in, submit with
//! the keyboard, watch ticks arrive, open a finished task, cancel a running one, the quota and outage
//! states, a phone-sized screen, password sign-in through a Supabase stand-in with token refresh.
//!
//! Screenshots go to `target/dashboard-screenshots/` (or `$DASHBOARD_SCREENSHOTS`); the ones in `docs/`
//! were taken by these tests.

use crate::browser::{Browser, Tab};
use crate::helpers::{Fleet, serve_pages, spawn_fleet};
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use euglena_tests::model::Reply;
use euglena_tests::proxy::Proxy;
use euglena_tests::supabase::FakeSupabase;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(90);

/// A reply after `ms` milliseconds, so a person (or a test) can see the ticks go by.
fn slowly(ms: u64, reply: Reply) -> Reply {
    Reply::Delayed(Duration::from_millis(ms), Box::new(reply))
}

/// Opens the dashboard signed in through a `#token=` link, and waits for the fleet figures.
async fn signed_in(browser: &Browser, base: &str, token: &str) -> Tab {
    let tab = browser.open(&format!("{base}/#token={token}")).await;
    tab.visible("agent-count").await;
    tab.until(
        "document.querySelector('[data-testid=\"agent-count\"]').textContent.trim() === '1'",
        "one live agent",
    )
    .await;
    assert!(
        !tab.eval::<String>("location.href").await.contains("token="),
        "the token leaves the address bar"
    );
    tab
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_submits_a_mandate_with_the_keyboard_and_watches_its_ticks_arrive_live() {
    let fleet = spawn_fleet(&[]).await;
    let pages = serve_pages(Router::new().route(
        "/guide",
        get(|| async { Html("<html><body><h1>Guide</h1><p>Step one: read.</p></body></html>") }),
    ))
    .await;
    let page = format!("{pages}/guide");
    let marker = format!("ui-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            slowly(
                800,
                Reply::action("THINK", "", json!({"memory_write": ["a note"]})),
            ),
            slowly(800, Reply::action("VISIT", &page, json!({}))),
            slowly(
                800,
                Reply::action(
                    "EXIT",
                    "",
                    json!({"deliverable": "Read the guide: step one."}),
                ),
            ),
            Reply::synthesis("Read the guide.", &["Read the guide: step one."]),
        ],
    );
    let browser = Browser::launch(1280, 900, false).await;
    let tab = signed_in(&browser, &fleet.gateway, &fleet.token("alice")).await;

    // Keyboard only: type the mandate, Tab to max ticks, replace it, Enter.
    let mandate = tab.visible("mandate").await;
    mandate.focus().await.unwrap();
    mandate
        .type_str(format!("Read the guide ({marker})"))
        .await
        .unwrap();
    mandate.press_key("Tab").await.unwrap();
    let focused: String = tab.eval("document.activeElement.dataset.testid").await;
    assert_eq!(
        focused, "max-ticks",
        "Tab moves from the mandate to max ticks"
    );
    tab.run("document.activeElement.select()").await;
    let max_ticks = tab.visible("max-ticks").await;
    max_ticks.type_str("6").await.unwrap();
    max_ticks.press_key("Enter").await.unwrap();

    tab.until(
        "location.hash.startsWith('#/tasks/')",
        "the task page opens",
    )
    .await;
    // Live: a tick is shown while the task still runs.
    tab.until(
        "document.querySelectorAll('[data-testid=\"tick\"]').length >= 1 && \
         document.querySelector('[data-testid=\"task-status\"]').textContent.trim() === 'in_progress'",
        "a tick shown while the task runs",
    )
    .await;
    assert_eq!(tab.text("stream-state").await, "live");
    tab.screenshot("dashboard-running").await;

    tab.until(
        "document.querySelector('[data-testid=\"task-status\"]').textContent.trim() === 'completed'",
        "the task completes",
    )
    .await;
    tab.visible("result").await;
    assert_eq!(tab.count("tick").await, 3);
    let actions: Vec<String> = tab
        .eval("[...document.querySelectorAll('[data-testid=\"tick\"]')].map(t => t.dataset.action)")
        .await;
    assert_eq!(actions, ["THINK", "VISIT", "EXIT"]);
    assert_eq!(tab.count("memory").await, 1);
    assert_eq!(tab.text("deliverable").await, "Read the guide: step one.");
    let source: String = tab
        .eval("document.querySelector('a[data-testid=\"source\"]').href")
        .await;
    assert_eq!(source, page);
    assert_eq!(tab.text("usage-model-calls").await, "4");
    assert_eq!(tab.text("tick-progress").await, "3 / 6");
    assert_eq!(tab.text("stream-state").await, "ended");
    tab.screenshot("dashboard-task").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_opens_with_its_whole_history_and_its_result_and_is_in_my_list() {
    let fleet = spawn_fleet(&[]).await;
    let marker = format!("ui-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("SEARCH", "rust editions", json!({})),
            Reply::action("EXIT", "", json!({"deliverable": "Editions are opt-in."})),
            Reply::synthesis("Looked it up.", &["Editions are opt-in."]),
        ],
    );
    let id = fleet
        .submit("alice", &format!("editions {marker}"), 5)
        .await;
    assert_eq!(
        fleet.wait_terminal("alice", &id, DEADLINE).await["status"],
        "completed"
    );
    let browser = Browser::launch(1280, 900, false).await;
    let tab = signed_in(&browser, &fleet.gateway, &fleet.token("alice")).await;

    tab.until(
        &format!("!!document.querySelector('[data-testid=\"task-row\"][data-task-id=\"{id}\"][data-status=\"completed\"]')"),
        "the finished task in my list",
    )
    .await;
    tab.run(&format!(
        "document.querySelector('[data-testid=\"task-row\"][data-task-id=\"{id}\"] a').click()"
    ))
    .await;
    tab.visible("result").await;
    assert_eq!(tab.text("task-status").await, "completed");
    assert_eq!(
        tab.count("tick").await,
        2,
        "ticks from before the page opened are listed"
    );
    assert_eq!(tab.text("deliverable").await, "Editions are opt-in.");
    tab.screenshot("dashboard-finished").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_cancelled_from_its_page_and_keeps_what_it_gathered() {
    let fleet = spawn_fleet(&[]).await;
    let marker = format!("ui-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("THINK", "", json!({"deliverable": "half of it"})),
            slowly(60_000, Reply::action("EXIT", "", json!({}))),
        ],
    );
    let id = fleet.submit("alice", &format!("long {marker}"), 8).await;
    let browser = Browser::launch(1280, 900, false).await;
    let tab = signed_in(&browser, &fleet.gateway, &fleet.token("alice")).await;
    tab.run(&format!("location.hash = '#/tasks/{id}'")).await;
    tab.until(
        "document.querySelectorAll('[data-testid=\"tick\"]').length === 1",
        "the first tick",
    )
    .await;

    tab.visible("cancel").await.click().await.unwrap();

    tab.until(
        "document.querySelector('[data-testid=\"task-status\"]').textContent.trim() === 'cancelled'",
        "the task is cancelled",
    )
    .await;
    tab.visible("result").await;
    assert_eq!(tab.text("deliverable").await, "half of it");
    let cancel_hidden: bool = tab
        .eval("document.querySelector('[data-testid=\"cancel\"]').hidden")
        .await;
    assert!(cancel_hidden, "no cancel button on a finished task");
    assert_eq!(
        fleet.wait_terminal("alice", &id, DEADLINE).await["status"],
        "cancelled"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandate_that_does_not_fit_the_quota_says_what_remains_and_keeps_what_was_typed() {
    let fleet = spawn_fleet(&[("DAILY_TICK_LIMIT", "10")]).await;
    let browser = Browser::launch(1280, 900, false).await;
    let tab = signed_in(&browser, &fleet.gateway, &fleet.token("alice")).await;
    let mandate = tab.visible("mandate").await;
    mandate.focus().await.unwrap();
    mandate.type_str("too big for today").await.unwrap();
    tab.run("document.querySelector('[data-testid=\"max-ticks\"]').value = '50'")
        .await;
    tab.visible("submit").await.click().await.unwrap();

    tab.visible("submit-error").await;
    let error = tab.text("submit-error").await;
    assert!(error.contains("10 remain"), "{error}");
    let typed: String = tab
        .eval("document.querySelector('[data-testid=\"mandate\"]').value")
        .await;
    assert_eq!(typed, "too big for today");
    tab.screenshot("dashboard-quota").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_with_words_a_person_understands() {
    let fleet = spawn_fleet(&[]).await;
    let expired = fleet.token_expiring_at(now() - 3600);
    let browser = Browser::launch(1280, 900, false).await;
    let tab = browser
        .open(&format!("{}/#token={expired}", fleet.gateway))
        .await;
    tab.visible("signin-error").await;
    let error = tab.text("signin-error").await.to_lowercase();
    assert!(
        error.contains("expired") || error.contains("sign in"),
        "{error}"
    );
    let signed_in: bool = tab
        .eval("document.querySelector('[data-testid=\"signin\"]').hidden === false")
        .await;
    assert!(signed_in, "the sign-in form stays up");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_stops_answering_is_said_so_and_the_page_recovers_without_losing_anything() {
    let fleet = spawn_fleet(&[]).await;
    let marker = format!("ui-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("THINK", "", json!({"deliverable": "before the outage"})),
            slowly(4_000, Reply::action("EXIT", "", json!({}))),
            Reply::synthesis("done", &["before the outage"]),
        ],
    );
    let target = fleet.gateway.trim_start_matches("http://").to_owned();
    let mut proxy = Proxy::start(&target).await;
    let base = format!("http://{}", proxy.address());
    let id = fleet.submit("alice", &format!("outage {marker}"), 5).await;
    let browser = Browser::launch(1280, 900, false).await;
    let tab = signed_in(&browser, &base, &fleet.token("alice")).await;
    tab.run(&format!("location.hash = '#/tasks/{id}'")).await;
    tab.visible("task-view").await;
    tab.until(
        "document.querySelectorAll('[data-testid=\"tick\"]').length === 1",
        "the first tick",
    )
    .await;

    proxy.cut();
    tab.until(
        "document.querySelector('[data-testid=\"stream-state\"]').textContent.trim() === 'reconnecting'",
        "the page notices the gateway is gone",
    )
    .await;
    let banner = tab
        .visible("banner")
        .await
        .inner_text()
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(banner.contains("does not answer"), "{banner}");
    assert_eq!(tab.count("tick").await, 1, "what was shown stays");
    tab.screenshot("dashboard-outage").await;

    proxy.restore().await;
    tab.until(
        "document.querySelector('[data-testid=\"task-status\"]').textContent.trim() === 'completed'",
        "the page catches up once the gateway answers",
    )
    .await;
    assert_eq!(tab.count("tick").await, 2);
    assert_eq!(tab.text("deliverable").await, "before the outage");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_sized_screen_nothing_scrolls_sideways() {
    let fleet = spawn_fleet(&[]).await;
    let long = format!(
        "{}/a/very/long/path/{}",
        serve_pages(Router::new().route("/{*rest}", get(|| async { Html("<p>x</p>") }))).await,
        "segment-".repeat(30)
    );
    let marker = format!("ui-{}", Uuid::new_v4());
    fleet.model.script(
        &marker,
        vec![
            Reply::action("VISIT", &long, json!({})),
            Reply::action("EXIT", "", json!({"deliverable": "w".repeat(400)})),
            Reply::synthesis("done", &[]),
        ],
    );
    let id = fleet.submit("alice", &format!("phone {marker}"), 5).await;
    fleet.wait_terminal("alice", &id, DEADLINE).await;
    let browser = Browser::launch(390, 844, true).await;
    let tab = signed_in(&browser, &fleet.gateway, &fleet.token("alice")).await;
    let overflow = "document.documentElement.scrollWidth > document.documentElement.clientWidth";
    assert!(!tab.eval::<bool>(overflow).await, "the home page fits");
    tab.screenshot("dashboard-mobile-home").await;
    tab.run(&format!("location.hash = '#/tasks/{id}'")).await;
    tab.visible("result").await;
    assert!(!tab.eval::<bool>(overflow).await, "the task page fits");
    tab.screenshot("dashboard-mobile").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_sign_in_goes_through_supabase_and_the_token_is_refreshed_before_it_expires() {
    let secret = format!("secret-{}", Uuid::new_v4());
    // Tokens live 65 s; the dashboard refreshes a minute before expiry, so within seconds.
    let supabase = FakeSupabase::start(&secret, Duration::from_secs(65)).await;
    let fleet = spawn_fleet(&[
        ("SUPABASE_JWT_SECRET", &secret),
        ("SUPABASE_URL", &supabase.url),
        ("SUPABASE_ANON_KEY", "anon-public-key"),
    ])
    .await;
    let browser = Browser::launch(1280, 900, false).await;
    let tab = browser.open(&fleet.gateway).await;
    // Keys go to the focused element, so each field is focused before it is typed into.
    let email = tab.visible("email").await;
    email.focus().await.unwrap();
    email.type_str("ada@example.org").await.unwrap();
    let password = tab.visible("password").await;
    password.focus().await.unwrap();
    password.type_str("wrong").await.unwrap();
    tab.visible("signin-submit").await.click().await.unwrap();
    tab.visible("signin-error").await;
    let error = tab.text("signin-error").await;
    assert!(
        error.contains("Invalid login credentials"),
        "Supabase's reason is shown: {error}"
    );

    tab.run("document.querySelector('[data-testid=\"password\"]').value = ''")
        .await;
    password.focus().await.unwrap();
    password.type_str("correct horse").await.unwrap();
    tab.visible("signin-submit").await.click().await.unwrap();
    tab.visible("agent-count").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !supabase.grants().contains(&"refresh_token".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refresh: {:?}",
            supabase.grants()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still signed in, with the refreshed token: the figures keep coming.
    tab.until(
        "document.querySelector('[data-testid=\"agent-count\"]').textContent.trim() === '1'",
        "the figures with the refreshed token",
    )
    .await;
    assert!(
        tab.eval::<bool>("document.querySelector('[data-testid=\"signin\"]').hidden")
            .await
    );
    browser.close().await;
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Fleet {
    /// A token for `alice` that expires at `exp` (unix seconds).
    pub fn token_expiring_at(&self, exp: u64) -> String {
        self.token_with(
            json!({"sub": "alice", "aud": "authenticated", "role": "authenticated",
                               "exp": exp, "iat": exp.saturating_sub(3600)}),
        )
    }
}
