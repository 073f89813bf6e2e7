//! `herd launch`: build task specifications from the command line (or from a file of command
//! lines), check everything the server would check, then queue them all in one request.
//!
//! Checks happen before anything is sent, so that a typo fails at once with the line at fault,
//! and a file with one bad line queues nothing. The server checks again (any client may call
//! it); both build specs with [`TaskSpec::new`], so they agree.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use herd_proto::redact::redact_text;
use herd_proto::request::IdempotencyKey;
use herd_proto::spec::MAX_TASKS_PER_SUBMIT;
use herd_proto::{TaskId, TaskRequest, TaskSpec};
use serde::Serialize;

use crate::cli::LaunchArgs;
use crate::exit::{self, Outcome};
use crate::{client, output};

/// At most this many bad lines of a `--file` are listed; the rest are counted.
const MAX_LISTED_PROBLEMS: usize = 20;

/// One command to queue, with where it came from.
struct Candidate {
    /// The line of `--file` it was read from; `None` for a command given on the command line.
    line: Option<usize>,
    /// The task, checked.
    spec: TaskSpec,
}

/// Runs `herd launch`.
pub async fn run(server: &str, args: LaunchArgs) -> anyhow::Result<Outcome> {
    let options = SharedOptions::from_args(&args)?;
    let candidates = match &args.file {
        Some(path) => candidates_from_file(&options, path)?,
        None => vec![candidate_from_command_line(&options, args.command.clone())?],
    };
    let from_file = args.file.is_some();
    if candidates.len() > MAX_TASKS_PER_SUBMIT {
        return Err(exit::Error::usage(format!(
            "the file has {} tasks; the limit is {MAX_TASKS_PER_SUBMIT} a launch: split the file into parts of at most {MAX_TASKS_PER_SUBMIT} lines",
            candidates.len()
        ))
        .into());
    }

    if args.test {
        print_test(&candidates, from_file, args.json)?;
        note!(
            "test mode (-t): {} nothing was queued",
            match candidates.len() {
                1 => "1 task checked,".to_owned(),
                count => format!("{count} tasks checked,"),
            }
        );
        return Ok(Outcome::Success);
    }

    let mut connection = client::connect(server).await?;
    let specs: Vec<TaskSpec> = candidates
        .iter()
        .map(|candidate| candidate.spec.clone())
        .collect();
    let key = match args.idempotency_key.clone() {
        Some(key) => key,
        None => launch_key()?,
    };
    let ids = submit_retrying(&mut connection, &specs, &key).await?;
    print_ids(&candidates, &ids, from_file, args.json)?;
    if from_file {
        note!("queued {} tasks in batch `{}`", ids.len(), args.batch);
    }
    Ok(Outcome::Success)
}

/// How long `herd launch` keeps retrying a submit whose answer it did not get.
const SUBMIT_RETRY_FOR: Duration = Duration::from_secs(60);

/// A key for this launch: random, so that its retries are the same submit and no other
/// launch's.
fn launch_key() -> anyhow::Result<IdempotencyKey> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| {
        anyhow::anyhow!(
            "cannot make an idempotency key: the system's random source failed: {error}"
        )
    })?;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(IdempotencyKey::new(format!("launch-{hex}"))?)
}

/// Submits, and submits again with the same key while the server cannot be reached (it was
/// restarted, the network dropped the answer), for up to [`SUBMIT_RETRY_FOR`]: the key makes
/// a repeat return the ids of a submit that did go through, so nothing is queued twice.
pub(crate) async fn submit_retrying(
    connection: &mut client::Connection,
    specs: &[TaskSpec],
    key: &IdempotencyKey,
) -> anyhow::Result<Vec<TaskId>> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut told = false;
    loop {
        let error = match connection.submit(specs, Some(key)).await {
            Ok(ids) => return Ok(ids),
            Err(error) => error,
        };
        let unreachable = error
            .downcast_ref::<exit::Error>()
            .is_some_and(|classified| classified.kind == exit::Kind::Unreachable);
        if !unreachable || started.elapsed() + backoff > SUBMIT_RETRY_FOR {
            return Err(error);
        }
        if !told {
            note!(
                "no answer to the launch ({error:#}); retrying with the same idempotency key for up to {}s, so nothing is queued twice",
                SUBMIT_RETRY_FOR.as_secs()
            );
            told = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The options shared by every task of one `herd launch`, already checked.
struct SharedOptions {
    /// Everything but the command.
    template: TaskRequest,
}

impl SharedOptions {
    /// Checks the options that do not depend on the command: URIs, Docker options, name...
    fn from_args(args: &LaunchArgs) -> Result<Self, exit::Error> {
        let current_dir = std::env::current_dir().ok();
        let inputs = args
            .inputs
            .iter()
            .map(|uri| checked_uri(uri, "input (-i)", current_dir.as_deref(), true))
            .collect::<Result<Vec<_>, _>>()?;
        let resources = args
            .resources
            .iter()
            .map(|uri| checked_uri(uri, "resource (-r)", current_dir.as_deref(), true))
            .collect::<Result<Vec<_>, _>>()?;
        let output = args
            .output
            .as_deref()
            .map(|uri| checked_uri(uri, "output (-o)", current_dir.as_deref(), false))
            .transpose()?;
        let template = TaskRequest {
            batch: args.batch.to_string(),
            name: args.name.clone(),
            command: Vec::new(),
            docker_image: args.docker.clone(),
            docker_options: args.docker_options.clone().unwrap_or_default(),
            uid: args.uid,
            gid: args.gid,
            inputs,
            resources,
            output,
            retry: args.retry,
            crash_limit: Some(args.crash_limit),
            run_timeout_secs: args.run_timeout.map(|duration| duration.as_secs()),
            download_timeout_secs: args.download_timeout.map(|duration| duration.as_secs()),
        };
        // Check the shared options once with a stand-in command, so that a bad -O is reported
        // once rather than on every line of a file.
        let probe = TaskRequest {
            command: vec!["true".to_owned()],
            ..template.clone()
        };
        TaskSpec::new(probe)
            .map_err(|error| exit::Error::usage(format!("{error}; nothing was queued")))?;
        Ok(SharedOptions { template })
    }

    /// The task running `command` with these options.
    fn task(&self, command: Vec<String>) -> Result<TaskSpec, herd_proto::Error> {
        TaskSpec::new(TaskRequest {
            command,
            ..self.template.clone()
        })
    }
}

/// Checks a URI with herd-fetch's grammar. A relative local path is made absolute against the
/// current directory, since that is what the user meant when typing it; an output takes no
/// `|action`.
fn checked_uri(
    text: &str,
    what: &str,
    current_dir: Option<&Path>,
    actions_allowed: bool,
) -> Result<String, exit::Error> {
    let refuse = |problem: String| {
        exit::Error::usage(format!(
            "invalid {what} `{}`: {}; nothing was queued",
            redact_text(text),
            redact_text(&problem)
        ))
    };
    let uri =
        herd_fetch::Uri::parse(text).map_err(|error| refuse(herd_fetch::error_chain(&error)))?;
    if !actions_allowed && !uri.actions().is_empty() {
        return Err(refuse(
            "an output is a folder the results are copied to; remove the `|...` actions".to_owned(),
        ));
    }
    let path = uri.path();
    if !uri.is_plain_path() || path.starts_with('/') {
        return Ok(uri.as_str().to_owned());
    }
    let Some(current_dir) = current_dir else {
        return Err(refuse(
            "a relative path needs a current directory; give an absolute path".to_owned(),
        ));
    };
    let mut absolute = current_dir.join(path).to_string_lossy().into_owned();
    if path.ends_with('/') && !absolute.ends_with('/') {
        absolute.push('/');
    }
    let rest = &uri.as_str()[path.len()..];
    let rewritten = format!("{absolute}{rest}");
    herd_fetch::Uri::parse(&rewritten)
        .map(|uri| uri.as_str().to_owned())
        .map_err(|error| refuse(herd_fetch::error_chain(&error)))
}

fn candidate_from_command_line(
    options: &SharedOptions,
    command: Vec<String>,
) -> Result<Candidate, exit::Error> {
    if command.is_empty() {
        return Err(exit::Error::usage(
            "no command given: put it after the options, e.g. `herd launch -b mybatch -- echo hello`, \
             or give --file FILE with one command per line",
        ));
    }
    let spec = options
        .task(command)
        .map_err(|error| exit::Error::usage(format!("{error}; nothing was queued")))?;
    Ok(Candidate { line: None, spec })
}

/// Reads a file of command lines (`-` is stdin) and checks every line; any problem queues
/// nothing and every bad line is reported as `FILE:LINE: problem`.
fn candidates_from_file(options: &SharedOptions, path: &Path) -> anyhow::Result<Vec<Candidate>> {
    let (shown_name, text) = read_command_file(path)?;
    let mut candidates = Vec::new();
    let mut problems = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(command) = shlex::split(line) else {
            problems.push(format!(
                "{shown_name}:{line_number}: cannot split the line like a shell: a quote is not closed or it ends with `\\`"
            ));
            continue;
        };
        match options.task(command) {
            Ok(spec) => candidates.push(Candidate {
                line: Some(line_number),
                spec,
            }),
            Err(error) => problems.push(format!("{shown_name}:{line_number}: {error}")),
        }
    }
    if !problems.is_empty() {
        let count = problems.len();
        let mut message = problems
            .iter()
            .take(MAX_LISTED_PROBLEMS)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        if count > MAX_LISTED_PROBLEMS {
            message.push_str(&format!("\n... and {} more", count - MAX_LISTED_PROBLEMS));
        }
        let plural = if count == 1 { "line is" } else { "lines are" };
        message.push_str(&format!("\n{count} {plural} wrong in {shown_name}; fix them and launch again: nothing was queued"));
        return Err(exit::Error::usage(message).into());
    }
    if candidates.is_empty() {
        return Err(exit::Error::usage(format!(
            "{shown_name} has no command line (blank lines and # comments are skipped); nothing was queued"
        ))
        .into());
    }
    Ok(candidates)
}

/// The text of `--file` and the name to show in messages.
fn read_command_file(path: &Path) -> anyhow::Result<(String, String)> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .context("cannot read the commands from stdin")?;
        let text = String::from_utf8(bytes).map_err(|_| {
            exit::Error::usage("the commands on stdin are not UTF-8 text; nothing was queued")
        })?;
        return Ok(("stdin".to_owned(), text));
    }
    let shown_name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| {
        exit::Error::usage(format!(
            "cannot read {shown_name}: {error}; give an existing file, or - for stdin"
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        exit::Error::usage(format!(
            "{shown_name} is not UTF-8 text; nothing was queued"
        ))
    })?;
    Ok((shown_name, text))
}

/// One line of `--json` output of a `--file` launch.
#[derive(Serialize)]
struct FileEntry<'a, T: Serialize> {
    line: usize,
    #[serde(flatten)]
    content: &'a T,
}

#[derive(Serialize)]
struct IdEntry {
    id: u64,
}

#[derive(Serialize)]
struct TaskEntry<'a> {
    task: &'a TaskSpec,
}

fn print_ids(
    candidates: &[Candidate],
    ids: &[TaskId],
    from_file: bool,
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        let mut text = String::with_capacity(ids.len() * 8);
        for id in ids {
            text.push_str(&id.to_string());
            text.push('\n');
        }
        return output::print(&text);
    }
    if !from_file {
        return output::print_json(&IdEntry { id: ids[0].0 });
    }
    let entries: Vec<IdEntry> = ids.iter().map(|id| IdEntry { id: id.0 }).collect();
    let lines: Vec<FileEntry<'_, IdEntry>> = candidates
        .iter()
        .zip(&entries)
        .map(|(candidate, entry)| FileEntry {
            line: candidate.line.unwrap_or(0),
            content: entry,
        })
        .collect();
    output::print_json(&lines)
}

fn print_test(candidates: &[Candidate], from_file: bool, json: bool) -> anyhow::Result<()> {
    if json {
        if !from_file {
            return output::print_json(&candidates[0].spec.redacted());
        }
        let shown: Vec<TaskSpec> = candidates
            .iter()
            .map(|candidate| candidate.spec.redacted())
            .collect();
        let entries: Vec<TaskEntry<'_>> = shown.iter().map(|task| TaskEntry { task }).collect();
        let lines: Vec<FileEntry<'_, TaskEntry<'_>>> = candidates
            .iter()
            .zip(&entries)
            .map(|(candidate, entry)| FileEntry {
                line: candidate.line.unwrap_or(0),
                content: entry,
            })
            .collect();
        return output::print_json(&lines);
    }
    let mut text = String::new();
    for (index, candidate) in candidates.iter().enumerate() {
        if index > 0 {
            text.push('\n');
        }
        if let Some(line) = candidate.line {
            text.push_str(&format!(
                "task {} of {} (line {line})\n",
                index + 1,
                candidates.len()
            ));
        } else {
            text.push_str("task\n");
        }
        text.push_str(&describe_spec(&candidate.spec, "  "));
    }
    output::print(&text)
}

/// The width of the labels of [`describe_spec`] (`download timeout:`), so that other blocks
/// can align with it.
pub const LABEL_WIDTH: usize = 17;

/// A readable block of `name: value` lines describing a specification; options left at their
/// default are left out.
pub fn describe_spec(spec: &TaskSpec, indent: &str) -> String {
    // Secrets are never printed, even those the user just typed.
    let spec = &spec.redacted();
    let mut fields: Vec<(&str, String)> = vec![("batch", spec.batch().to_string())];
    if let Some(name) = spec.name() {
        fields.push(("name", name.to_owned()));
    }
    fields.push(("command", output::command_line(spec.command())));
    match spec.docker() {
        Some(docker) => {
            fields.push(("docker", docker.image.clone()));
            if !docker.options_text.trim().is_empty() {
                fields.push(("docker options", docker.options_text.clone()));
            }
        }
        None => fields.push(("docker", "none (runs on the worker's host)".to_owned())),
    }
    if let Some(uid) = spec.uid() {
        fields.push(("uid", uid.to_string()));
    }
    if let Some(gid) = spec.gid() {
        fields.push(("gid", gid.to_string()));
    }
    for input in spec.inputs() {
        fields.push(("input", input.clone()));
    }
    for resource in spec.resources() {
        fields.push(("resource", resource.clone()));
    }
    if let Some(output) = spec.output() {
        fields.push(("output", output.to_owned()));
    }
    if spec.retry() > 0 {
        fields.push(("retry", spec.retry().to_string()));
    }
    if spec.crash_limit() != Some(herd_proto::spec::DEFAULT_CRASH_LIMIT) {
        let limit = spec
            .crash_limit()
            .map_or("none".to_owned(), |limit| limit.to_string());
        fields.push(("crash limit", limit));
    }
    if let Some(timeout) = spec.run_timeout() {
        fields.push((
            "run timeout",
            humantime::format_duration(timeout).to_string(),
        ));
    }
    if let Some(timeout) = spec.download_timeout() {
        fields.push((
            "download timeout",
            humantime::format_duration(timeout).to_string(),
        ));
    }
    let mut text = String::new();
    for (label, value) in fields {
        text.push_str(&format!(
            "{indent}{:<LABEL_WIDTH$} {value}\n",
            format!("{label}:")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn launch_args(words: &[&str]) -> LaunchArgs {
        let mut argv = vec!["herd", "launch"];
        argv.extend_from_slice(words);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Launch(args) => args,
            _ => panic!("not launch"),
        }
    }

    fn shared(words: &[&str]) -> Result<SharedOptions, exit::Error> {
        SharedOptions::from_args(&launch_args(words))
    }

    #[test]
    fn unknown_docker_options_are_refused_by_name() {
        let error = shared(&["-d", "ubuntu", "-O", "--mount type=tmpfs,dst=/t", "true"])
            .err()
            .unwrap();
        assert_eq!(error.kind, exit::Kind::Usage);
        assert!(error.message.contains("--mount"), "{}", error.message);
        // Host-sharing options are understood: a worker's policy decides, not the launcher.
        assert!(shared(&["-d", "ubuntu", "-O", "--cap-add SYS_ADMIN", "true"]).is_ok());
    }

    #[test]
    fn docker_options_need_an_image() {
        let error = shared(&["-O", "--gpus all", "true"]).err().unwrap();
        assert!(error.message.contains("-d IMAGE"), "{}", error.message);
    }

    #[test]
    fn a_described_spec_shows_no_secret() {
        let spec = TaskSpec::new(TaskRequest {
            command: vec!["true".into()],
            docker_image: Some("busybox".into()),
            docker_options: "--env=TOKEN=secret-value".into(),
            output: Some("ftp://u:hunter2@h/out/".into()),
            ..TaskRequest::default()
        })
        .unwrap();
        let text = describe_spec(&spec, "");
        assert!(
            text.contains("--env=TOKEN=***") && text.contains("ftp://u:***@h/out/"),
            "{text}"
        );
        assert!(
            !text.contains("secret-value") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_uri_is_shown_without_its_password() {
        let error = checked_uri("ftp://u:hunter2@h/x|untar", "output", None, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("ftp://u:***@h/x") && !error.contains("hunter2"),
            "{error}"
        );
    }

    #[test]
    fn uris_are_checked_and_relative_paths_made_absolute() {
        let error = shared(&["-i", "bogus://x/y", "true"]).err().unwrap();
        assert!(error.message.contains("input (-i)"), "{}", error.message);
        let error = shared(&["-o", "s3://bucket/out/|untar", "true"])
            .err()
            .unwrap();
        assert!(error.message.contains("output (-o)"), "{}", error.message);

        let current = Path::new("/home/me/project");
        assert_eq!(
            checked_uri("data/in.fq", "input", Some(current), true).unwrap(),
            "/home/me/project/data/in.fq"
        );
        assert_eq!(
            checked_uri("out/", "output", Some(current), false).unwrap(),
            "/home/me/project/out/"
        );
        assert_eq!(
            checked_uri("db.tgz|untar", "resource", Some(current), true).unwrap(),
            "/home/me/project/db.tgz|untar"
        );
        assert_eq!(
            checked_uri("s3://b/k", "input", Some(current), true).unwrap(),
            "s3://b/k"
        );
    }

    #[test]
    fn a_missing_command_is_a_usage_error() {
        let options = shared(&[]).ok().unwrap();
        let error = candidate_from_command_line(&options, Vec::new())
            .err()
            .unwrap();
        assert_eq!(error.kind, exit::Kind::Usage);
        assert!(error.message.contains("no command given"));
    }

    #[test]
    fn file_lines_are_split_like_a_shell_and_bad_lines_named() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("commands.txt");
        std::fs::write(
            &path,
            "# comment\n\necho 'hello world'\r\nsh -c \"exit 3\"\n",
        )
        .unwrap();
        let options = shared(&["-b", "b1"]).ok().unwrap();
        let candidates = candidates_from_file(&options, &path).unwrap();
        assert_eq!(candidates.len(), 2);
        assert_eq!(candidates[0].line, Some(3));
        assert_eq!(candidates[0].spec.command(), ["echo", "hello world"]);
        assert_eq!(candidates[1].spec.command(), ["sh", "-c", "exit 3"]);

        std::fs::write(&path, "echo fine\necho 'unclosed\n").unwrap();
        let error = candidates_from_file(&options, &path)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("commands.txt:2: cannot split"), "{error}");
        assert!(error.contains("nothing was queued"), "{error}");
    }

    /// A submit whose connection was lost (the server stopped after the connection was made)
    /// is sent again with the same key once the server is back: queued once, ids returned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submit_rides_out_a_server_restart_and_queues_once() -> anyhow::Result<()> {
        let mut cluster = herd_tests::Cluster::start().await?;
        let admin = cluster.admin_token().await?;
        let mut connection = client::connect_with(&cluster.url, Some(&admin)).await?;
        connection.who_am_i().await?;
        cluster.stop_server().await?;
        let specs = vec![TaskSpec::new(herd_tests::shell_task("default", "true"))?];
        let key = launch_key()?;
        let submitting = tokio::spawn(async move {
            let ids = submit_retrying(&mut connection, &specs, &key).await;
            (ids, connection, specs, key)
        });
        cluster.restart_server().await?;
        let (ids, mut connection, specs, key) = submitting.await?;
        let ids = ids?;
        assert_eq!(ids.len(), 1);
        // The same key again: the same id, nothing more queued.
        assert_eq!(connection.submit(&specs, Some(&key)).await?, ids);
        let listed = connection
            .tasks(&herd_proto::request::TaskFilter::default())
            .await?;
        assert_eq!(listed.len(), 1);
        Ok(())
    }
}
