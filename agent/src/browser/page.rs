//! What a VISIT returns, and the text clean-up both ways of fetching share.

use std::fmt;

/// How a page was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Rendered by headless Chromium (JavaScript ran).
    Chromium,
    /// Fetched with a plain HTTP GET because Chromium was unavailable; JavaScript did not run.
    HttpFallback {
        /// Why Chromium was not used.
        reason: String,
    },
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Chromium => f.write_str("chromium"),
            Self::HttpFallback { reason } => {
                write!(f, "http-fallback, JavaScript did not run; reason: {reason}")
            }
        }
    }
}

/// The result of one VISIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The URL asked for.
    pub url: String,
    /// The URL after redirects.
    pub final_url: String,
    /// The document title (empty when there is none).
    pub title: String,
    /// The visible text, normalised and cut to the text budget.
    pub text: String,
    /// Whether `text` was cut to fit the budget.
    pub truncated: bool,
    /// How the page was fetched.
    pub via: Via,
}

impl Page {
    /// The page as the observation the model reads next tick.
    #[must_use]
    pub fn observation(&self) -> String {
        let mut out = format!("VISIT {} (via: {})\n", self.url, self.via);
        if self.final_url != self.url {
            out.push_str(&format!("final URL: {}\n", self.final_url));
        }
        if !self.title.is_empty() {
            out.push_str(&format!("title: {}\n", self.title));
        }
        out.push_str("---\n");
        out.push_str(&self.text);
        if self.truncated {
            out.push_str(&format!(
                "\n[page text truncated to {} characters]",
                self.text.chars().count()
            ));
        }
        out
    }
}

/// Trims trailing blanks from lines and collapses runs of blank lines to one.
pub(crate) fn normalize_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_run += 1;
            if blank_run > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

/// Cuts `text` to at most `budget` characters; says whether it cut.
pub(crate) fn truncate_chars(text: &str, budget: usize) -> (String, bool) {
    match text.char_indices().nth(budget) {
        Some((end, _)) => (text[..end].to_owned(), true),
        None => (text.to_owned(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_counts_characters_not_bytes_and_reports_the_cut() {
        assert_eq!(truncate_chars("héllo", 3), ("hél".to_owned(), true));
        assert_eq!(truncate_chars("héllo", 5), ("héllo".to_owned(), false));
        assert_eq!(truncate_chars("", 0), (String::new(), false));
    }

    #[test]
    fn normalized_text_has_no_blank_line_runs_or_trailing_blanks() {
        assert_eq!(normalize_text("\n\na  \n\n\n\nb\t\n \n"), "a\n\nb");
    }

    #[test]
    fn the_observation_names_the_fallback_and_the_truncation() {
        let page = Page {
            url: "http://example.com/".into(),
            final_url: "http://example.com/next".into(),
            title: "Example".into(),
            text: "abc".into(),
            truncated: true,
            via: Via::HttpFallback {
                reason: "Chromium is not installed at /nope".into(),
            },
        };
        let observation = page.observation();
        assert!(observation.starts_with(
            "VISIT http://example.com/ (via: http-fallback, JavaScript did not run; reason: Chromium is not installed at /nope)"
        ), "{observation}");
        assert!(observation.contains("final URL: http://example.com/next"));
        assert!(observation.contains("title: Example"));
        assert!(observation.ends_with("abc\n[page text truncated to 3 characters]"));
    }
}
