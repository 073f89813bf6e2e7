//! The URI grammar: `scheme[@option...]://path[|action...]`, or a plain local path.
//!
//! A URI is parsed once into a [`Uri`] and passed around typed. Parsing checks everything the
//! grammar can check (scheme, options, actions, empty path) and nothing that needs the network.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A URI scheme known to the grammar. Whether this build can transfer it is up to the
/// [`Resolver`](crate::Resolver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// `file:///abs/path`, or a plain path: a file on the local machine.
    File,
    /// `s3://bucket/key`: an S3-compatible object store.
    S3,
    /// `http://host/path`.
    Http,
    /// `https://host/path`.
    Https,
    /// `ftp://[user[:password]@]host/path`.
    Ftp,
    /// `azure://container/path`: Azure blob storage.
    Azure,
    /// `gs://bucket/key`: Google Cloud Storage.
    Gs,
    /// `run+fastq://ACCESSION`: the FASTQ files of a sequencing run (ENA / SRA).
    RunFastq,
    /// `fasp://user@host:path`: IBM Aspera.
    Fasp,
}

impl Scheme {
    /// Every scheme, in the order error messages list them.
    pub const ALL: [Scheme; 9] = [
        Scheme::File,
        Scheme::S3,
        Scheme::Http,
        Scheme::Https,
        Scheme::Ftp,
        Scheme::Azure,
        Scheme::Gs,
        Scheme::RunFastq,
        Scheme::Fasp,
    ];

    /// The scheme as written in a URI (`run+fastq`, `s3`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::File => "file",
            Scheme::S3 => "s3",
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Ftp => "ftp",
            Scheme::Azure => "azure",
            Scheme::Gs => "gs",
            Scheme::RunFastq => "run+fastq",
            Scheme::Fasp => "fasp",
        }
    }

    /// The scheme written `name` (ASCII case-insensitive), if known.
    pub fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL
            .into_iter()
            .find(|scheme| scheme.as_str().eq_ignore_ascii_case(name))
    }

    /// The options this scheme accepts after `@`.
    pub fn options(self) -> &'static [SchemeOption] {
        match self {
            Scheme::RunFastq => &SchemeOption::ALL,
            _ => &[],
        }
    }

    /// Whether the part before the first `/` is an authority that may hold `user:password@`.
    fn has_authority(self) -> bool {
        matches!(
            self,
            Scheme::Http | Scheme::Https | Scheme::Ftp | Scheme::Fasp
        )
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A transport option written `scheme@option://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SchemeOption {
    /// `run+fastq@ena-ftp`: download from ENA over FTP.
    EnaFtp,
    /// `run+fastq@ena-https`: download from ENA over HTTPS.
    EnaHttps,
    /// `run+fastq@sra-tools`: download from NCBI SRA with sra-tools.
    SraTools,
    /// `run+fastq@only-read1`: keep read 1 only.
    OnlyRead1,
}

impl SchemeOption {
    /// Every option, in the order error messages list them.
    pub const ALL: [SchemeOption; 4] = [
        SchemeOption::EnaFtp,
        SchemeOption::EnaHttps,
        SchemeOption::SraTools,
        SchemeOption::OnlyRead1,
    ];

    /// The option as written after `@`.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemeOption::EnaFtp => "ena-ftp",
            SchemeOption::EnaHttps => "ena-https",
            SchemeOption::SraTools => "sra-tools",
            SchemeOption::OnlyRead1 => "only-read1",
        }
    }
}

impl fmt::Display for SchemeOption {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A relative sub-folder named by `|mv:DIR`: not empty, not absolute, no `..`; `.` and empty
/// components are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubDir(String);

impl SubDir {
    /// Checks `dir` and normalizes it (`./a//b/` becomes `a/b`).
    pub fn new(dir: &str) -> Result<SubDir> {
        if dir.is_empty() {
            return Err(Error::invalid_uri(
                "`|mv:` needs a folder name, e.g. |mv:db",
            ));
        }
        if dir.starts_with('/') {
            return Err(Error::invalid_uri(format!(
                "`|mv:{dir}` must name a folder relative to the download directory, e.g. |mv:db, not an absolute path"
            )));
        }
        if dir.split('/').any(|component| component == "..") {
            return Err(Error::invalid_uri(format!(
                "`|mv:{dir}` must not contain `..`: name a folder inside the download directory, e.g. |mv:db"
            )));
        }
        let components: Vec<&str> = dir
            .split('/')
            .filter(|component| !component.is_empty() && *component != ".")
            .collect();
        if components.is_empty() {
            return Err(Error::invalid_uri(format!(
                "`|mv:{dir}` must name a sub-folder, e.g. |mv:db"
            )));
        }
        Ok(SubDir(components.join("/")))
    }

    /// The normalized folder, `/`-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The normalized folder as a relative path.
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
}

/// Something done to a downloaded item, written `|action` after the path; actions run in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// `|gunzip`: `file.gz` becomes `file`.
    Gunzip,
    /// `|untar`: a `.tar`, `.tar.gz` or `.tgz` is extracted and removed.
    Untar,
    /// `|unzip`: a `.zip` is extracted and removed.
    Unzip,
    /// `|mv:DIR`: the current item(s) move into the sub-folder `DIR`.
    Move(SubDir),
}

impl Action {
    /// Parses one action, written without its leading `|`.
    pub fn parse(text: &str) -> Result<Action> {
        let (name, argument) = match text.split_once(':') {
            Some((name, argument)) => (name, Some(argument)),
            None => (text, None),
        };
        let simple = match name {
            "gunzip" => Some(Action::Gunzip),
            "untar" => Some(Action::Untar),
            "unzip" => Some(Action::Unzip),
            "mv" => None,
            _ => {
                return Err(Error::invalid_uri(format!(
                    "unknown action `|{text}`: known actions are |gunzip, |untar, |unzip, |mv:DIR"
                )));
            }
        };
        match (simple, argument) {
            (Some(action), None) => Ok(action),
            (Some(_), Some(_)) => Err(Error::invalid_uri(format!(
                "`|{name}` takes no argument: write |{name} alone, not |{text}"
            ))),
            (None, Some(dir)) => Ok(Action::Move(SubDir::new(dir)?)),
            (None, None) => Err(Error::invalid_uri(
                "`|mv` needs a folder: write |mv:DIR, e.g. |mv:db",
            )),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Gunzip => formatter.write_str("gunzip"),
            Action::Untar => formatter.write_str("untar"),
            Action::Unzip => formatter.write_str("unzip"),
            Action::Move(dir) => write!(formatter, "mv:{}", dir.as_str()),
        }
    }
}

/// A parsed URI: `scheme[@option...]://path[|action...]`, or a plain local path (absolute or
/// relative, optionally followed by actions).
///
/// A path ending in `/` is a directory (a prefix, for object stores) and is transferred
/// recursively. `Display` gives the URI back as written, credentials included, so that it can be
/// passed on; use [`Uri::redacted`] (or `Debug`, which is redacted) in logs and messages.
#[derive(Clone)]
pub struct Uri {
    /// The URI as given, trimmed, with the scheme in lower case.
    text: String,
    scheme: Scheme,
    plain: bool,
    options: Vec<SchemeOption>,
    /// Where the path (without the actions) lies in `text`.
    path: Range<usize>,
    actions: Vec<Action>,
}

impl Uri {
    /// Parses `input`. Costs one allocation for the text, plus one per option list, action list
    /// and `mv:` folder when present; no I/O.
    pub fn parse(input: &str) -> Result<Uri> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(Error::invalid_uri(
                "empty uri: give a local path, file:///abs/path or scheme://path, e.g. s3://bucket/key",
            ));
        }
        if trimmed.contains('\0') {
            return Err(Error::invalid_uri(format!(
                "`{}` contains a NUL byte: remove it",
                redact_str(trimmed).escape_default()
            )));
        }
        let (body, actions_text) = match trimmed.find('|') {
            Some(bar) => (&trimmed[..bar], Some(&trimmed[bar + 1..])),
            None => (trimmed, None),
        };
        let actions = parse_actions(trimmed, actions_text)?;

        let separator = body.find("://").filter(|&end| !body[..end].contains('/'));
        let Some(separator) = separator else {
            if body.is_empty() {
                return Err(Error::invalid_uri(format!(
                    "empty path in `{trimmed}`: put a path before the first `|`"
                )));
            }
            return Ok(Uri {
                text: trimmed.to_owned(),
                scheme: Scheme::File,
                plain: true,
                options: Vec::new(),
                path: 0..body.len(),
                actions,
            });
        };

        let prefix = &body[..separator];
        let mut words = prefix.split('@');
        let scheme_name = words.next().unwrap_or_default();
        let scheme = parse_scheme(trimmed, scheme_name)?;
        let options = parse_options(trimmed, scheme, words)?;

        let path = &body[separator + 3..];
        check_path(trimmed, scheme, path)?;

        // Keep the text as given, but with the scheme in lower case so that equal URIs compare equal.
        let text = with_lowercase_scheme(trimmed, scheme, scheme_name);
        Ok(Uri {
            text,
            scheme,
            plain: false,
            options,
            path: separator + 3..body.len(),
            actions,
        })
    }

    /// The URI of the local `path` (a plain path; it is a directory if it ends with `/`).
    pub fn from_local_path(path: impl AsRef<Path>) -> Result<Uri> {
        let path = path.as_ref();
        let Some(text) = path.to_str() else {
            return Err(Error::invalid_uri(format!(
                "`{}` is not valid UTF-8 and cannot be written as a uri: rename it",
                path.display()
            )));
        };
        if text.contains('|') {
            return Err(Error::invalid_uri(format!(
                "`{text}` contains `|`, which starts an action in a uri: rename it"
            )));
        }
        if text.contains("://") {
            return Err(Error::invalid_uri(format!(
                "`{text}` contains `://` and would read as a scheme: use file://{text} with an absolute path"
            )));
        }
        Uri::parse(text)
    }

    /// The URI's scheme (`File` for a plain path).
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The options written after the scheme, without repeats, in the order written.
    pub fn options(&self) -> &[SchemeOption] {
        &self.options
    }

    /// Whether `option` was given.
    pub fn has_option(&self, option: SchemeOption) -> bool {
        self.options.contains(&option)
    }

    /// The path: what follows `://` (or the whole plain path), without the actions. For `file`
    /// and plain paths it is the local path; for other schemes it starts with the authority
    /// (`bucket/key`, `user:password@host/path`), credentials included.
    pub fn path(&self) -> &str {
        &self.text[self.path.clone()]
    }

    /// The actions, in the order they run.
    pub fn actions(&self) -> &[Action] {
        &self.actions
    }

    /// Whether the path ends with `/`: a directory or prefix, transferred recursively.
    pub fn is_dir(&self) -> bool {
        self.path().ends_with('/')
    }

    /// Whether the URI was written as a plain path rather than `file://`.
    pub fn is_plain_path(&self) -> bool {
        self.plain
    }

    /// The local path, for the `file` scheme and plain paths.
    pub fn local_path(&self) -> Option<&Path> {
        (self.scheme == Scheme::File).then(|| Path::new(self.path()))
    }

    /// The last component of the path, which a download keeps as its file name: `None` for a
    /// directory, or when the last component is `.` or `..`. For http(s) the query and fragment
    /// are left out.
    pub fn file_name(&self) -> Option<&str> {
        if self.is_dir() {
            return None;
        }
        let mut path = self.path();
        if matches!(self.scheme, Scheme::Http | Scheme::Https) {
            path = path.split(['?', '#']).next().unwrap_or_default();
        }
        let name = path.rsplit('/').next().unwrap_or_default();
        (!name.is_empty() && name != "." && name != "..").then_some(name)
    }

    /// The same URI without its actions.
    pub fn without_actions(&self) -> Uri {
        let end = self.path.end;
        Uri {
            text: self.text[..end].to_owned(),
            scheme: self.scheme,
            plain: self.plain,
            options: self.options.clone(),
            path: self.path.clone(),
            actions: Vec::new(),
        }
    }

    /// The same URI as a directory: its path with a trailing `/` added when it has none
    /// (actions kept).
    pub fn as_dir(&self) -> Result<Uri> {
        if self.is_dir() {
            return Ok(self.clone());
        }
        let end = self.path.end;
        Uri::parse(&format!("{}/{}", &self.text[..end], &self.text[end..]))
    }

    /// The URI of `relative` under this one (taken as a directory whether or not it ends with
    /// `/`); actions are dropped. `relative` is `/`-separated, not empty, not absolute, and has
    /// no `..`; a trailing `/` makes the result a directory.
    pub fn join(&self, relative: &str) -> Result<Uri> {
        let bad = relative.is_empty()
            || relative.starts_with('/')
            || relative.contains('|')
            || relative.split('/').any(|component| component == "..");
        if bad {
            return Err(Error::invalid_uri(format!(
                "cannot join `{relative}` to `{}`: give a relative path without `..` or `|`",
                self.redacted()
            )));
        }
        let base = &self.text[..self.path.end];
        let mut text = String::with_capacity(base.len() + 1 + relative.len());
        text.push_str(base);
        if !base.ends_with('/') {
            text.push('/');
        }
        text.push_str(relative);
        Uri::parse(&text)
    }

    /// The full URI as written, credentials included: pass it on, do not log it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The URI for logs and messages: the password of `user:password@` (http, https, ftp, fasp)
    /// and the query of http(s) URIs (pre-signed URLs carry signatures there) become `***`.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(self)
    }
}

/// The actions after the first `|` of `trimmed` (`actions_text`), each checked.
fn parse_actions(trimmed: &str, actions_text: Option<&str>) -> Result<Vec<Action>> {
    let mut actions = Vec::new();
    if let Some(actions_text) = actions_text {
        for action_text in actions_text.split('|') {
            if action_text.is_empty() {
                return Err(Error::invalid_uri(format!(
                    "empty action in `{}`: remove the extra `|`",
                    redact_str(trimmed)
                )));
            }
            actions.push(Action::parse(action_text)?);
        }
    }
    Ok(actions)
}

/// The scheme named `scheme_name` at the start of `trimmed`; an unknown one lists the known.
fn parse_scheme(trimmed: &str, scheme_name: &str) -> Result<Scheme> {
    let Some(scheme) = Scheme::from_name(scheme_name) else {
        let known: Vec<&str> = Scheme::ALL.iter().map(|scheme| scheme.as_str()).collect();
        let shown = if scheme_name.is_empty() {
            "(none)"
        } else {
            scheme_name
        };
        return Err(Error::invalid_uri(format!(
            "unknown scheme `{shown}` in `{}`: known schemes are {}; a plain path is a local file",
            redact_str(trimmed),
            known.join(", ")
        )));
    };
    Ok(scheme)
}

/// The `@option` words after the scheme's name: each must be one of `scheme`'s options
/// (case-insensitive); a repeated one is kept once.
fn parse_options<'w>(
    trimmed: &str,
    scheme: Scheme,
    words: impl Iterator<Item = &'w str>,
) -> Result<Vec<SchemeOption>> {
    let mut options = Vec::new();
    for word in words {
        if word.is_empty() {
            return Err(Error::invalid_uri(format!(
                "empty option in `{}`: remove the `@` or name an option after it",
                redact_str(trimmed)
            )));
        }
        let allowed = scheme.options();
        let Some(option) = allowed
            .iter()
            .copied()
            .find(|option| option.as_str().eq_ignore_ascii_case(word))
        else {
            let hint = if allowed.is_empty() {
                format!("{scheme} takes no options")
            } else {
                let names: Vec<String> =
                    allowed.iter().map(|option| format!("@{option}")).collect();
                format!("{scheme} options are {}", names.join(", "))
            };
            return Err(Error::invalid_uri(format!(
                "unknown option `@{word}` for {scheme}: {hint}"
            )));
        };
        if !options.contains(&option) {
            options.push(option);
        }
    }
    Ok(options)
}

/// Refuses an empty `path` after `://`, and a relative one for `file://`.
fn check_path(trimmed: &str, scheme: Scheme, path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(Error::invalid_uri(format!(
            "empty path in `{}`: put the path after `://`, e.g. {scheme}://{}",
            redact_str(trimmed),
            example_path(scheme)
        )));
    }
    if scheme == Scheme::File && !path.starts_with('/') {
        return Err(Error::invalid_uri(format!(
            "`{trimmed}` must have an absolute path: write file:///abs/path, or a plain relative path"
        )));
    }
    Ok(())
}

/// `trimmed` with its scheme's name (`scheme_name`, as written) in lower case.
fn with_lowercase_scheme(trimmed: &str, scheme: Scheme, scheme_name: &str) -> String {
    if scheme_name.bytes().any(|byte| byte.is_ascii_uppercase()) {
        let mut text = String::with_capacity(trimmed.len());
        text.push_str(scheme.as_str());
        text.push_str(&trimmed[scheme_name.len()..]);
        text
    } else {
        trimmed.to_owned()
    }
}

fn example_path(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::File => "/abs/path",
        Scheme::S3 | Scheme::Gs => "bucket/key",
        Scheme::Azure => "container/path",
        Scheme::Http | Scheme::Https | Scheme::Ftp => "host/path",
        Scheme::RunFastq => "SRR000001",
        Scheme::Fasp => "user@host:path",
    }
}

/// Hides secrets in a URI's text (see [`Uri::redacted`]); works on unparsed text too, so that
/// parse errors never echo a password.
fn redact_str(text: &str) -> Cow<'_, str> {
    let Some(separator) = text.find("://").filter(|&end| !text[..end].contains('/')) else {
        return Cow::Borrowed(text);
    };
    let scheme_name = text[..separator].split('@').next().unwrap_or_default();
    let scheme = Scheme::from_name(scheme_name);
    let path_start = separator + 3;
    let path_end = text[path_start..]
        .find('|')
        .map_or(text.len(), |bar| path_start + bar);
    let path = &text[path_start..path_end];

    // Unknown schemes are redacted as if they had an authority: better safe in an error message.
    let mut password: Option<Range<usize>> = None;
    if scheme.is_none_or(Scheme::has_authority) {
        let authority = &path[..path.find('/').unwrap_or(path.len())];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
        {
            password = Some(path_start + colon + 1..path_start + at);
        }
    }
    let mut query: Option<Range<usize>> = None;
    if matches!(scheme, Some(Scheme::Http | Scheme::Https) | None)
        && let Some(question) = path.find('?')
    {
        let end = path[question..]
            .find('#')
            .map_or(path.len(), |hash| question + hash);
        if end > question + 1 {
            query = Some(path_start + question + 1..path_start + end);
        }
    }
    if password.is_none() && query.is_none() {
        return Cow::Borrowed(text);
    }
    // The two may overlap (`x://u:p?q@h`: the `?` inside what reads as a password): hide
    // their union then, rather than slice backwards.
    let (password, query) = match (password, query) {
        (Some(password), Some(query)) if password.end > query.start => {
            let union = password.start.min(query.start)..password.end.max(query.end);
            (Some(union), None)
        }
        separate => separate,
    };
    let hidden = [password, query].into_iter().flatten();
    let mut redacted = String::with_capacity(text.len());
    let mut position = 0;
    for range in hidden {
        redacted.push_str(&text[position..range.start]);
        redacted.push_str("***");
        position = range.end;
    }
    redacted.push_str(&text[position..]);
    Cow::Owned(redacted)
}

/// A [`Uri`] shown without its secrets; see [`Uri::redacted`].
pub struct Redacted<'a>(&'a Uri);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&redact_str(&self.0.text))
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

impl fmt::Debug for Uri {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Uri({:?})", redact_str(&self.text))
    }
}

impl PartialEq for Uri {
    fn eq(&self, other: &Uri) -> bool {
        self.text == other.text
    }
}

impl Eq for Uri {}

impl Hash for Uri {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for Uri {
    fn partial_cmp(&self, other: &Uri) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Uri {
    fn cmp(&self, other: &Uri) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl FromStr for Uri {
    type Err = Error;

    fn from_str(text: &str) -> Result<Uri> {
        Uri::parse(text)
    }
}

impl TryFrom<&str> for Uri {
    type Error = Error;

    fn try_from(text: &str) -> Result<Uri> {
        Uri::parse(text)
    }
}

impl TryFrom<String> for Uri {
    type Error = Error;

    fn try_from(text: String) -> Result<Uri> {
        Uri::parse(&text)
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords_and_queries_only() {
        assert_eq!(redact_str("ftp://me:secret@host/a"), "ftp://me:***@host/a");
        assert_eq!(redact_str("ftp://me@host/a"), "ftp://me@host/a");
        assert_eq!(
            redact_str("https://h/a?sig=xyz#top|gunzip"),
            "https://h/a?***#top|gunzip"
        );
        assert_eq!(redact_str("s3://bucket/a:b@c/d?e"), "s3://bucket/a:b@c/d?e");
        assert_eq!(redact_str("/local/pa:ss@word"), "/local/pa:ss@word");
    }

    #[test]
    fn a_password_and_a_query_that_overlap_are_hidden_together() {
        // Found by the property tests: these panicked (a slice running backwards).
        assert_eq!(redact_str("..://mv:?..@"), "..://mv:***");
        assert_eq!(redact_str("http://u:p?q@h/x"), "http://u:***");
        assert!(Uri::parse("bogus://u:p?secret@h").is_err());
    }
}
