//! Headless Chromium driven over the DevTools protocol (chromiumoxide), for the dashboard tests: a
//! browser per viewport, pages, and waits that poll with a deadline.

use chromiumoxide::handler::viewport::Viewport;
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::{BrowserConfig, Element, Page};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a wait for something on a page lasts at most.
pub const UI_WAIT: Duration = Duration::from_secs(30);

/// A headless Chromium with a fresh profile.
pub struct Browser {
    browser: chromiumoxide::Browser,
    handler: JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Launches Chromium with a `width` x `height` viewport (`mobile` emulates a phone).
    pub async fn launch(width: u32, height: u32, mobile: bool) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let chromium =
            std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut config = BrowserConfig::builder()
            .chrome_executable(chromium)
            .user_data_dir(profile.path())
            .viewport(Viewport {
                width,
                height,
                device_scale_factor: Some(1.0),
                emulating_mobile: mobile,
                is_landscape: false,
                has_touch: mobile,
            })
            .window_size(width, height)
            .arg("disable-background-networking")
            .arg("disable-component-update")
            .arg("disable-sync")
            .arg("no-first-run")
            .arg("disable-gpu");
        // Chromium's sandbox cannot start as root; as any other user it stays on.
        if is_root() {
            config = config.no_sandbox();
        }
        let (browser, mut handler) = chromiumoxide::Browser::launch(config.build().unwrap())
            .await
            .expect("chromium starts (scripts/ensure-chromium.sh installs it)");
        let handler = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Self {
            browser,
            handler,
            _profile: profile,
        }
    }

    /// Opens `url` in a new tab.
    pub async fn open(&self, url: &str) -> Tab {
        Tab(self.browser.new_page(url).await.unwrap())
    }

    /// Closes the browser.
    pub async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A page, with waits.
pub struct Tab(pub Page);

impl Tab {
    /// The value of `expression` in the page.
    pub async fn eval<T: DeserializeOwned>(&self, expression: &str) -> T {
        self.0
            .evaluate(expression)
            .await
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
            .into_value()
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// Runs `statements` in the page for their effect.
    pub async fn run(&self, statements: &str) {
        let _: bool = self
            .eval(&format!("(() => {{ {statements}; return true; }})()"))
            .await;
    }

    /// Waits until `expression` is true in the page.
    pub async fn until(&self, expression: &str, what: &str) {
        let deadline = tokio::time::Instant::now() + UI_WAIT;
        loop {
            let ok: bool = self
                .0
                .evaluate(expression)
                .await
                .ok()
                .and_then(|r| r.into_value().ok())
                .unwrap_or(false);
            if ok {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let body: String = self.eval("document.body.innerText").await;
                let at: String = self.eval("location.href").await;
                self.screenshot(&format!("failed-{}", what.replace(' ', "-")))
                    .await;
                panic!("{what}: not seen within {UI_WAIT:?} at {at}; the page says:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The element `[data-testid=<id>]`, once it is visible.
    pub async fn visible(&self, id: &str) -> Element {
        self.until(
            &format!(
                "(() => {{ const e = document.querySelector('[data-testid=\"{id}\"]'); \
                 return !!e && !e.closest('[hidden]') && e.offsetParent !== null; }})()"
            ),
            &format!("{id} visible"),
        )
        .await;
        self.0
            .find_element(format!("[data-testid=\"{id}\"]"))
            .await
            .unwrap()
    }

    /// The text of `[data-testid=<id>]` (empty when absent).
    pub async fn text(&self, id: &str) -> String {
        self.eval(&format!(
            "document.querySelector('[data-testid=\"{id}\"]')?.textContent?.trim() ?? ''"
        ))
        .await
    }

    /// How many elements `[data-testid=<id>]` there are.
    pub async fn count(&self, id: &str) -> usize {
        self.eval(&format!(
            "document.querySelectorAll('[data-testid=\"{id}\"]').length"
        ))
        .await
    }

    /// Saves a screenshot as `name`.png in `DASHBOARD_SCREENSHOTS` (default: the target directory).
    pub async fn screenshot(&self, name: &str) {
        let dir = std::env::var("DASHBOARD_SCREENSHOTS").map_or_else(
            |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots"),
            PathBuf::from,
        );
        std::fs::create_dir_all(&dir).unwrap();
        self.0
            .save_screenshot(
                ScreenshotParams::builder().full_page(true).build(),
                dir.join(format!("{name}.png")),
            )
            .await
            .unwrap();
    }
}
