//! Property tests of the URI grammar: any text is parsed or refused without a panic, a NUL
//! byte anywhere is refused, a parsed URI shown and parsed again is the same URI, and
//! well-formed URIs of every scheme parse into the parts they were built from.

use proptest::prelude::*;
use proptest::test_runner::Config;

use super::{Action, Scheme, SchemeOption, SubDir, Uri};

/// Few enough cases to stay well under a second in debug builds, and no regression files.
fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Text that looks like a URI often enough to reach every branch of the parser: schemes,
/// `@`, `://`, `|`, actions and their arguments, `..`, credentials, queries, spaces.
fn uri_like() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        "(file|s3|S3|http|https|ftp|azure|gs|run\\+fastq|fasp|bogus)",
        Just("://".to_owned()),
        Just("@".to_owned()),
        "(ena-ftp|ena-https|sra-tools|only-read1|x)",
        Just("|".to_owned()),
        "(gunzip|untar|unzip|mv:|mv:db|mv:../x|mv:/abs|mv:./a//b/)",
        "[a-z0-9._-]{0,6}",
        Just("/".to_owned()),
        Just("..".to_owned()),
        "[ :?#=&%]",
        "\\PC{0,3}",
    ];
    proptest::collection::vec(pieces, 0..12).prop_map(|pieces| pieces.concat())
}

/// A path component with the characters URIs carry (no `/`, `|` or white space).
fn component() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-][A-Za-z0-9._~:@=&%+-]{0,11}"
}

/// A `/`-separated path of 1 to 4 components, with or without a trailing `/`.
fn relative_path() -> impl Strategy<Value = String> {
    (proptest::collection::vec(component(), 1..5), any::<bool>()).prop_map(|(parts, dir)| {
        let mut path = parts.join("/");
        if dir {
            path.push('/');
        }
        path
    })
}

/// Actions as written after `|`, with what they parse to.
fn actions() -> impl Strategy<Value = Vec<(String, Action)>> {
    let action = prop_oneof![
        Just(("gunzip".to_owned(), Action::Gunzip)),
        Just(("untar".to_owned(), Action::Untar)),
        Just(("unzip".to_owned(), Action::Unzip)),
        "[a-z][a-z0-9_-]{0,5}(/[a-z0-9_-]{1,5}){0,2}".prop_map(|dir| {
            let parsed = Action::Move(SubDir::new(&dir).unwrap());
            (format!("mv:{dir}"), parsed)
        }),
    ];
    proptest::collection::vec(action, 0..4)
}

/// The scheme's name in a random mix of cases (the grammar is case-insensitive there).
fn cased(name: &str, upper: &[bool]) -> String {
    name.chars()
        .zip(upper.iter().cycle())
        .map(|(letter, upper)| {
            if *upper {
                letter.to_ascii_uppercase()
            } else {
                letter
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_is_parsed_or_refused_without_panicking(text in prop_oneof![uri_like(), "\\PC{0,40}"]) {
        if let Ok(uri) = Uri::parse(&text) {
            let _ = (uri.file_name(), uri.redacted().to_string(), format!("{uri:?}"));
            let _ = (uri.as_dir(), uri.join("a/b"), uri.without_actions());
        }
    }

    #[test]
    fn a_parsed_uri_shown_and_parsed_again_is_the_same(text in uri_like()) {
        let Ok(uri) = Uri::parse(&text) else {
            return Ok(());
        };
        let again = Uri::parse(&uri.to_string());
        prop_assert!(again.is_ok(), "{text:?} shown as {uri} is refused: {again:?}");
        let again = again.unwrap();
        prop_assert_eq!(&again, &uri);
        prop_assert_eq!(again.scheme(), uri.scheme());
        prop_assert_eq!(again.options(), uri.options());
        prop_assert_eq!(again.path(), uri.path());
        prop_assert_eq!(again.actions(), uri.actions());
        prop_assert_eq!(again.is_plain_path(), uri.is_plain_path());
    }

    #[test]
    fn a_nul_byte_anywhere_is_refused(text in uri_like(), at in any::<prop::sample::Index>()) {
        let mut characters: Vec<char> = text.chars().collect();
        let position = at.index(characters.len() + 1);
        characters.insert(position, '\0');
        let with_nul: String = characters.into_iter().collect();
        let refused = Uri::parse(&with_nul);
        prop_assert!(refused.is_err(), "{with_nul:?}: {refused:?}");
        let message = refused.unwrap_err().to_string();
        prop_assert!(message.contains("NUL"), "{with_nul:?}: {message}");
    }

    #[test]
    fn a_well_formed_uri_parses_into_its_parts(
        scheme in proptest::sample::select(Scheme::ALL.to_vec()),
        upper in proptest::collection::vec(any::<bool>(), 1..4),
        options in proptest::sample::subsequence(SchemeOption::ALL.to_vec(), 0..=4),
        repeat_first_option in any::<bool>(),
        path in relative_path(),
        actions in actions(),
    ) {
        let options = if scheme == Scheme::RunFastq { options } else { Vec::new() };
        let mut written: Vec<String> = options.iter().map(|option| option.to_string()).collect();
        if repeat_first_option && let Some(first) = written.first().cloned() {
            written.push(first.to_ascii_uppercase());
        }
        let prefix: String = std::iter::once(cased(scheme.as_str(), &upper))
            .chain(written)
            .collect::<Vec<_>>()
            .join("@");
        // `file://` needs an absolute path; the other schemes start with a bucket or host.
        let path = if scheme == Scheme::File { format!("/{path}") } else { path };
        let action_text: String = actions.iter().map(|(text, _)| format!("|{text}")).collect();
        let text = format!("{prefix}://{path}{action_text}");
        let uri = Uri::parse(&text);
        prop_assert!(uri.is_ok(), "{text}: {uri:?}");
        let uri = uri.unwrap();
        prop_assert_eq!(uri.scheme(), scheme);
        prop_assert_eq!(uri.options(), options.as_slice());
        prop_assert_eq!(uri.path(), path.as_str());
        let expected: Vec<Action> = actions.into_iter().map(|(_, action)| action).collect();
        prop_assert_eq!(uri.actions(), expected.as_slice());
        prop_assert_eq!(uri.is_dir(), path.ends_with('/'));
        prop_assert!(!uri.is_plain_path());
        prop_assert!(uri.to_string().starts_with(scheme.as_str()), "{uri}");
        prop_assert_eq!(uri.local_path().is_some(), scheme == Scheme::File);
    }

    #[test]
    fn a_plain_path_is_a_local_file(
        absolute in any::<bool>(),
        path in relative_path(),
        actions in actions(),
    ) {
        // A `:` is refused only before `://`; a plain path never holds `://` here.
        let path = if absolute { format!("/{path}") } else { format!("./{path}") };
        let action_text: String = actions.iter().map(|(text, _)| format!("|{text}")).collect();
        let uri = Uri::parse(&format!("{path}{action_text}"));
        prop_assert!(uri.is_ok(), "{path}{action_text}: {uri:?}");
        let uri = uri.unwrap();
        prop_assert_eq!(uri.scheme(), Scheme::File);
        prop_assert!(uri.is_plain_path());
        prop_assert_eq!(uri.local_path(), Some(std::path::Path::new(&path)));
        prop_assert_eq!(uri.actions().len(), actions.len());
    }
}
