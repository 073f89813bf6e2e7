//! Secrets kept out of what is shown: [`redact_text`] hides the password of a URI's userinfo
//! (`user:***@`) and the values of signed query parameters (`sig=***`, `X-Amz-Signature=***`...)
//! anywhere in a text; [`redact_docker_options`] hides the values of `-e KEY=VALUE`.
//! [`crate::TaskSpec::redacted`] and [`TaskView::redacted`] apply both to what users see;
//! workers still receive the real spec.
//!
//! herd-fetch's `Uri::redacted` does the same for a parsed URI; this one works on any text
//! (a message, a URI as given, a line of options), because herd-proto cannot depend on fetch.

use std::borrow::Cow;

use crate::view::TaskView;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Query parameters whose value is a secret (compared ignoring case).
const SECRET_PARAMETERS: [&str; 10] = [
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "token",
    "access_token",
    "password",
];

/// Where a URI's authority, or a query parameter's value, ends.
fn ends_value(c: char) -> bool {
    c.is_whitespace() || matches!(c, '/' | '?' | '#' | '&' | '|' | '"' | '\'' | '<' | '>')
}

/// `text` with every URI password and secret query value replaced by `***`.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let mut hidden: Vec<(usize, usize)> = Vec::new();
    // Userinfo passwords: `scheme://user:password@host`.
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let end = text[start..]
            .find(ends_value)
            .map_or(text.len(), |offset| start + offset);
        let authority = &text[start..end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
        {
            hidden.push((start + colon + 1, start + at));
        }
        from = end.max(start);
    }
    // Secret query parameters: `?sig=...`, `&X-Amz-Signature=...`.
    for (index, c) in text.char_indices() {
        if c != '?' && c != '&' {
            continue;
        }
        let name_start = index + 1;
        let Some(equals) = text[name_start..].find('=') else {
            continue;
        };
        let name = &text[name_start..name_start + equals];
        if !SECRET_PARAMETERS
            .iter()
            .any(|secret| secret.eq_ignore_ascii_case(name))
        {
            continue;
        }
        let value_start = name_start + equals + 1;
        let value_end = text[value_start..]
            .find(|c: char| ends_value(c) && c != '/')
            .map_or(text.len(), |offset| value_start + offset);
        hidden.push((value_start, value_end));
    }
    mask(text, hidden)
}

/// `text` with each `(start, end)` byte range replaced by `***` (ranges in any order).
fn mask(text: &str, mut hidden: Vec<(usize, usize)>) -> Cow<'_, str> {
    hidden.retain(|(start, end)| start < end);
    if hidden.is_empty() {
        return Cow::Borrowed(text);
    }
    hidden.sort_unstable();
    let mut shown = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in hidden {
        if start < copied {
            continue;
        }
        shown.push_str(&text[copied..start]);
        shown.push_str(MASK);
        copied = end;
    }
    shown.push_str(&text[copied..]);
    Cow::Owned(shown)
}

/// The words of a shell-like line, as byte ranges (quotes and backslashes included).
fn words(text: &str) -> Vec<(usize, usize)> {
    let mut words = Vec::new();
    let mut start = None;
    let mut quote = None;
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (_, '\\') if quote != Some('\'') => escaped = true,
            (Some(open), c) if c == open => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, c) if c.is_whitespace() => {
                if let Some(begin) = start.take() {
                    words.push((begin, index));
                }
                continue;
            }
            (None, _) => {}
        }
        start.get_or_insert(index);
    }
    if let Some(begin) = start {
        words.push((begin, text.len()));
    }
    words
}

/// The value of `KEY=VALUE` in a raw word starting at `start`: the range after the first `=`
/// (a closing quote stays shown).
fn assignment_value(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let equals = start + text[start..end].find('=')?;
    let word = &text[start..end];
    let closing = match word.chars().next() {
        Some(quote @ ('"' | '\'')) if word.len() > 1 && word.ends_with(quote) => 1,
        _ => 0,
    };
    Some((equals + 1, end - closing))
}

/// Docker options text (`-O`) with the value of every `-e KEY=VALUE`, `-eKEY=VALUE`,
/// `--env KEY=VALUE` and `--env=KEY=VALUE` replaced by `***`; URIs in it are redacted too.
pub fn redact_docker_options(text: &str) -> Cow<'_, str> {
    let mut hidden = Vec::new();
    let words = words(text);
    let mut previous_was_flag = false;
    for &(start, end) in &words {
        let word = &text[start..end];
        if previous_was_flag {
            previous_was_flag = false;
            hidden.extend(assignment_value(text, start, end));
            continue;
        }
        if word == "-e" || word == "--env" {
            previous_was_flag = true;
        } else if let Some(rest) = word.strip_prefix("--env=") {
            let offset = end - rest.len();
            hidden.extend(assignment_value(text, offset, end));
        } else if word.starts_with("-e") && !word.starts_with("--") {
            hidden.extend(assignment_value(text, start + 2, end));
        }
    }
    match mask(text, hidden) {
        Cow::Borrowed(text) => redact_text(text),
        Cow::Owned(shown) => Cow::Owned(redact_text(&shown).into_owned()),
    }
}

fn redact_option(text: &Option<String>) -> Option<String> {
    text.as_deref().map(|text| redact_text(text).into_owned())
}

impl TaskView {
    /// The view as users may see it: the spec [`redacted`](crate::TaskSpec::redacted), and
    /// secrets hidden in messages and transfer URIs.
    pub fn redacted(&self) -> TaskView {
        let mut view = self.clone();
        view.spec = self.spec.redacted();
        view.message = redact_option(&self.message);
        for attempt in &mut view.attempts {
            attempt.message = redact_option(&attempt.message);
            for transfer in &mut attempt.transfers {
                transfer.uri = redact_text(&transfer.uri).into_owned();
            }
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_password_is_hidden_and_the_user_kept() {
        assert_eq!(
            redact_text("ftp://user:password@host/x"),
            "ftp://user:***@host/x"
        );
        assert_eq!(
            redact_text("cannot fetch https://u:p%40ss@h:8080/a?b=1: refused"),
            "cannot fetch https://u:***@h:8080/a?b=1: refused"
        );
        assert_eq!(redact_text("s3://bucket/key"), "s3://bucket/key");
        assert_eq!(
            redact_text("ftp://anonymous@host/x"),
            "ftp://anonymous@host/x"
        );
        assert!(matches!(redact_text("/data/in.txt"), Cow::Borrowed(_)));
    }

    #[test]
    fn signed_query_parameters_are_hidden() {
        assert_eq!(
            redact_text("https://a.blob.core.windows.net/c/f?sv=2022&se=2030&sig=abc%2Fdef&sp=r"),
            "https://a.blob.core.windows.net/c/f?sv=2022&se=2030&sig=***&sp=r"
        );
        assert_eq!(
            redact_text(
                "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F2024&X-Amz-Signature=f00&X-Amz-Expires=60"
            ),
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60"
        );
        assert_eq!(
            redact_text("http://h/x?token=t0k|untar"),
            "http://h/x?token=***|untar"
        );
        assert_eq!(redact_text("http://h/x?tokens=1"), "http://h/x?tokens=1");
    }

    #[test]
    fn environment_values_in_docker_options_are_hidden() {
        assert_eq!(redact_docker_options("-e TOKEN=secret"), "-e TOKEN=***");
        assert_eq!(
            redact_docker_options("--shm-size 1g --env A=1 --env=B=2 -eC=3 -e HOME"),
            "--shm-size 1g --env A=*** --env=B=*** -eC=*** -e HOME"
        );
        assert_eq!(
            redact_docker_options("-e \"TOKEN=a b\" -e 'X=y z' --label k=v"),
            "-e \"TOKEN=***\" -e 'X=***' --label k=v"
        );
        assert_eq!(
            redact_docker_options("-v /a:/b --label u=ftp://u:pw@h/x"),
            "-v /a:/b --label u=ftp://u:***@h/x"
        );
        assert!(matches!(
            redact_docker_options("--gpus all"),
            Cow::Borrowed(_)
        ));
    }
}
