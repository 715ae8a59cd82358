//! Error text for logs and error bodies.

/// `error` and its sources joined with ": ", skipping a source whose text the message already ends with.
/// SDK errors (AWS, lapin) keep their cause in `source()`, and their `Debug` dumps raw responses; this gives
/// one readable line instead.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: inner")]
    struct Repeats(#[source] Inner);

    #[test]
    fn sources_are_joined_once() {
        assert_eq!(chain(&Outer(Inner)), "outer: inner");
        assert_eq!(chain(&Repeats(Inner)), "outer: inner");
    }
}
