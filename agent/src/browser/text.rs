//! HTML to text for the HTTP fallback, where no JavaScript runs: html5ever's tokenizer reads the markup
//! (entities decoded, broken markup tolerated) and a small sink keeps what a reader would see.
//!
//! Only the tokenizer is used, not a tree builder: the text needs no tree, and the tokenizer stays linear
//! in the input whatever the nesting. (Tree-building converters such as html2text walk the tree
//! recursively and their cost grows with depth on hostile pages.)

use std::cell::RefCell;

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};

/// Elements whose content is never visible text, and how the tokenizer must read their content.
/// (`title` is captured separately; `noscript` stays, since JavaScript does not run here.)
fn hidden(name: &str) -> Option<Option<RawKind>> {
    Some(match name {
        "script" => Some(RawKind::ScriptData),
        "style" | "xmp" | "iframe" | "noembed" | "noframes" => Some(RawKind::Rawtext),
        "textarea" => Some(RawKind::Rcdata),
        // Parsed as markup, skipped up to their end tag.
        "template" | "svg" | "math" => None,
        _ => return None,
    })
}

/// Elements that start a new line.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "tbody",
    "thead",
    "tr",
    "ul",
];

/// Reduces HTML to `(title, visible text)` without running it: comments, scripts, styles and other
/// invisible elements dropped, a line break at each block element, a tab between table cells.
#[must_use]
pub fn html_to_text(html: &str) -> (String, String) {
    let queue = BufferQueue::default();
    queue.push_back(StrTendril::from_slice(html));
    let tokenizer = Tokenizer::new(TextSink::default(), TokenizerOpts::default());
    // The sink never asks the tokenizer to pause for a script, so feeding runs to the end.
    let _ = tokenizer.feed(&queue);
    tokenizer.end();
    let state = tokenizer.sink.state.into_inner();
    let lines: Vec<String> = state.text.lines().map(collapse_spaces).collect();
    (collapse_spaces(&state.title), lines.join("\n"))
}

#[derive(Default)]
struct TextSink {
    state: RefCell<TextState>,
}

#[derive(Default)]
struct TextState {
    text: String,
    title: String,
    /// Inside `<title>` (its text goes to `title`).
    in_title: bool,
    /// The hidden element being skipped, and how many of it are open (`svg` inside `svg`).
    skipping: Option<(String, usize)>,
}

impl TokenSink for TextSink {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        let mut state = self.state.borrow_mut();
        match token {
            Token::TagToken(tag) => {
                let name: &str = &tag.name;
                let start = tag.kind == TagKind::StartTag;
                if let Some((skipped, depth)) = &mut state.skipping {
                    if name == skipped.as_str() {
                        if start && !tag.self_closing {
                            *depth += 1;
                        } else if !start {
                            *depth -= 1;
                            if *depth == 0 {
                                state.skipping = None;
                            }
                        }
                    }
                    return TokenSinkResult::Continue;
                }
                if name == "title" {
                    state.in_title = start && !tag.self_closing;
                    return if state.in_title {
                        TokenSinkResult::RawData(RawKind::Rcdata)
                    } else {
                        TokenSinkResult::Continue
                    };
                }
                if start && let Some(raw) = hidden(name) {
                    if tag.self_closing {
                        return TokenSinkResult::Continue;
                    }
                    state.skipping = Some((name.to_owned(), 1));
                    return raw.map_or(TokenSinkResult::Continue, TokenSinkResult::RawData);
                }
                if BLOCKS.contains(&name) {
                    if !state.text.ends_with('\n') {
                        state.text.push('\n');
                    }
                } else if start && matches!(name, "td" | "th") {
                    state.text.push('\t');
                }
            }
            Token::CharacterTokens(chars) => {
                if state.in_title {
                    state.title.push_str(&chars);
                } else if state.skipping.is_none() {
                    push_collapsed(&mut state.text, &chars);
                }
            }
            Token::DoctypeToken(_)
            | Token::CommentToken(_)
            | Token::NullCharacterToken
            | Token::EOFToken
            | Token::ParseError(_) => {}
        }
        TokenSinkResult::Continue
    }
}

/// Appends `s` with each run of white space turned into one space (line breaks come from block elements,
/// not from the source's own line breaks).
fn push_collapsed(out: &mut String, s: &str) {
    let mut in_space = out.ends_with(' ');
    for c in s.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
                in_space = true;
            }
        } else {
            out.push(c);
            in_space = false;
        }
    }
}

fn collapse_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn html_to_text_keeps_visible_text_and_drops_scripts_styles_and_comments() {
        let html = r#"<!DOCTYPE html><html><head><title> The  &amp; Title </title>
            <style>body { color: red }</style><script>var x = "<p>not text</p>";</script></head>
            <body><h1>Heading</h1><!-- hidden --><p>First <b>bold</b> para&nbsp;&#8212;&#x41;</p>
            <div data-x="a>b">Second</div><script type="module">alert(1)</script>
            <svg><text>drawn</text></svg><template><p>inert</p></template>
            <ul><li>one</li><li>two</li></ul>3 &lt; 4 &unknown; AT&T</body></html>"#;
        let (title, text) = html_to_text(html);
        assert_eq!(title, "The & Title");
        assert!(text.contains("Heading"), "{text}");
        assert!(text.contains("First bold para \u{2014}A"), "{text}");
        assert!(text.contains("\nSecond"), "{text}");
        assert!(text.contains("one\n"), "{text}");
        assert!(text.contains("3 < 4 &unknown; AT&T"), "{text}");
        for hidden in [
            "not text", "alert", "color", "hidden", "Title", "drawn", "inert",
        ] {
            assert!(!text.contains(hidden), "{hidden:?} leaked into {text:?}");
        }
    }

    #[test]
    fn html_to_text_survives_truncated_and_malformed_markup() {
        for html in [
            "<",
            "<p",
            "<script>never closed",
            "a < b",
            "<!-- open",
            "<div class='x",
            "&#xZZ;",
            "&#0;",
            "</svg></svg><svg/>after",
            "<title>only a title",
        ] {
            let _ = html_to_text(html);
        }
        assert_eq!(html_to_text("a < b").1, "a < b");
        assert_eq!(html_to_text("<svg/>after").1, "after");
        assert_eq!(html_to_text("<title>only a title").0, "only a title");
    }

    #[test]
    fn table_cells_are_separated_and_rows_are_lines() {
        let (_, text) =
            html_to_text("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>");
        assert_eq!(text.trim(), "a b\nc");
    }

    /// A hostile page nested twenty thousand deep reads in linear time (a tree-building converter
    /// recurses once per level).
    #[test]
    fn deeply_nested_markup_reads_in_linear_time() {
        let read = |depth: usize| {
            let html = format!(
                "{}deep{}",
                "<div><span>".repeat(depth),
                "</span></div>".repeat(depth)
            );
            let started = Instant::now();
            let (_, text) = html_to_text(&html);
            assert!(text.contains("deep"));
            started.elapsed()
        };
        let small = read(2_000).max(Duration::from_micros(1));
        let large = read(20_000);
        // Ten times the input: linear work takes about ten times as long; quadratic work a hundred.
        assert!(
            large < small * 40,
            "10x the nesting took {:.1}x as long ({small:?} vs {large:?})",
            large.as_secs_f64() / small.as_secs_f64()
        );
    }
}
