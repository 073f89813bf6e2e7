//! A task specification: [`TaskRequest`], what a user asks for, unchecked; [`TaskSpec`], the
//! same once validated. [`TaskSpec::new`] is the only way to build a spec, so every spec in
//! the system (from `herd launch`, from any gRPC client, from the database) was checked once
//! by the same code, and a spec cannot be changed afterwards.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::docker::DockerOptions;
use crate::redact::{redact_docker_options, redact_text};
use crate::{BatchName, Error};

/// What a user asks to run, as given: nothing here is checked. Its serde form (stable field
/// names, durations in seconds) is how the server stores a spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The batch; empty means `default`.
    #[serde(default)]
    pub batch: String,
    /// A name for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// argv, run without a shell.
    pub command: Vec<String>,
    /// Run in this Docker image; `None` runs the command on the worker's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    /// `herd launch -O`, as given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub docker_options: String,
    /// Run as this user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Run as this group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// URIs copied into `/input`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// URIs fetched once per worker onto `/resource`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Where `/output` goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Automatic retries after a failed attempt.
    #[serde(default)]
    pub retry: u32,
    /// Attempts lost with their worker (crashes) before the task fails with reason
    /// `crash_limit`; `None` is [`DEFAULT_CRASH_LIMIT`], 0 is no limit. Absent from rows
    /// stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_limit: Option<u32>,
    /// Kill the command after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout_secs: Option<u64>,
    /// Fail the attempt if staging takes longer than this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_timeout_secs: Option<u64>,
}

/// The Docker part of a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DockerSpec {
    /// Image reference, e.g. `ubuntu:24.04`.
    pub image: String,
    /// `-O` exactly as given (kept for display and for the worker).
    pub options_text: String,
    /// `-O` parsed.
    #[serde(skip)]
    pub options: DockerOptions,
}

/// What a task asks of a worker; the scheduler gives a task only to a worker that can serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    /// A process on the host: any worker.
    Bare,
    /// A Docker container: a worker with a Docker executor.
    Docker,
    /// A privileged container: a Docker worker started with `--allow-privileged`.
    PrivilegedDocker,
}

/// A validated task, immutable: built only by [`TaskSpec::new`]. Its serde form is what
/// `herd task show --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSpec {
    batch: BatchName,
    name: Option<String>,
    command: Vec<String>,
    /// Boxed: most tasks have none, and a queued task should not carry the ~300 bytes of an
    /// empty one.
    docker: Option<Box<DockerSpec>>,
    uid: Option<u32>,
    gid: Option<u32>,
    inputs: Vec<String>,
    resources: Vec<String>,
    output: Option<String>,
    retry: u32,
    crash_limit: Option<u32>,
    #[serde(serialize_with = "serialize_seconds")]
    run_timeout: Option<Duration>,
    #[serde(serialize_with = "serialize_seconds")]
    download_timeout: Option<Duration>,
}

fn serialize_seconds<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => serializer.serialize_some(&duration.as_secs()),
        None => serializer.serialize_none(),
    }
}

/// The longest command accepted, in bytes over all arguments.
pub const MAX_COMMAND_BYTES: usize = 1 << 20;
/// The longest task name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// The longest input, resource or output URI, in bytes.
pub const MAX_URI_BYTES: usize = 8 << 10;
/// The longest `-O` docker options text, in bytes.
pub const MAX_DOCKER_OPTIONS_BYTES: usize = 16 << 10;
/// The longest Docker image reference, in bytes.
pub const MAX_IMAGE_BYTES: usize = 1 << 10;
/// The most inputs one task may have.
pub const MAX_INPUTS: usize = 10_000;
/// The most resources one task may have.
pub const MAX_RESOURCES: usize = 1_000;
/// The highest user or group id accepted (`2^31 - 1`: ids above are the kernel's overflow
/// ids or negative numbers read as unsigned).
pub const MAX_ID: u32 = i32::MAX as u32;
/// The longest run or download timeout, in seconds (30 days).
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
/// The most automatic retries of a task.
pub const MAX_RETRY: u32 = 100;
/// How many attempts a task may lose with their worker before it fails, unless it says
/// otherwise (`herd launch --crash-limit`).
pub const DEFAULT_CRASH_LIMIT: u32 = 3;
/// The highest `--crash-limit` accepted (0, no limit, aside).
pub const MAX_CRASH_LIMIT: u32 = 100;
/// The most tasks one submit may carry.
pub const MAX_TASKS_PER_SUBMIT: usize = 100_000;

impl TaskSpec {
    /// Checks everything that does not need a worker (a command, valid docker options, sane
    /// timeouts, non-empty URIs) and builds the spec. URIs are parsed by `herd launch`
    /// (herd-fetch) and again by the worker.
    pub fn new(request: TaskRequest) -> Result<TaskSpec, Error> {
        let batch = if request.batch.is_empty() {
            BatchName::default_batch()
        } else {
            BatchName::new(request.batch.as_str())?
        };
        check_command(&request.command)?;
        if let Some(name) = &request.name
            && (name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains('\0'))
        {
            return Err(Error::invalid(
                "name",
                format!("a task name must be 1 to {MAX_NAME_BYTES} bytes, without NUL"),
            ));
        }
        let run_timeout = timeout("run timeout", request.run_timeout_secs)?;
        let download_timeout = timeout("download timeout", request.download_timeout_secs)?;
        check_uris(&request)?;
        check_id("uid", request.uid)?;
        check_id("gid", request.gid)?;
        if request.retry > MAX_RETRY {
            return Err(Error::invalid(
                "retry",
                format!("{} retries asked; the limit is {MAX_RETRY}", request.retry),
            ));
        }
        if request
            .crash_limit
            .is_some_and(|limit| limit > MAX_CRASH_LIMIT)
        {
            return Err(Error::invalid(
                "crash limit",
                format!(
                    "a crash limit of {} asked; the limit is {MAX_CRASH_LIMIT} (0 means no limit)",
                    request.crash_limit.unwrap_or_default()
                ),
            ));
        }
        let docker = match request.docker_image {
            Some(image) => Some(Box::new(docker_spec(image, request.docker_options)?)),
            None if !request.docker_options.trim().is_empty() => {
                check_docker_options(&request.docker_options)?;
                return Err(Error::invalid(
                    "docker options",
                    "-O/--option needs a Docker image: add -d IMAGE",
                ));
            }
            None => None,
        };
        Ok(TaskSpec {
            batch,
            name: request.name,
            command: request.command,
            docker,
            uid: request.uid,
            gid: request.gid,
            inputs: request.inputs,
            resources: request.resources,
            output: request.output,
            retry: request.retry,
            crash_limit: request.crash_limit,
            run_timeout,
            download_timeout,
        })
    }

    /// The spec as users may see it: passwords and signed query parameters of its URIs and
    /// the values of `-e KEY=VALUE` in its docker options replaced by `***` (see
    /// [`crate::redact`]). For display only: a worker needs the real spec.
    pub fn redacted(&self) -> TaskSpec {
        let uri = |text: &String| redact_text(text).into_owned();
        let docker = self.docker.as_ref().map(|docker| {
            let options_text = redact_docker_options(&docker.options_text).into_owned();
            // Parsed again so the copy holds no secret either (`***` is a valid value).
            let options = DockerOptions::parse(&options_text).unwrap_or_default();
            Box::new(DockerSpec {
                image: docker.image.clone(),
                options_text,
                options,
            })
        });
        TaskSpec {
            inputs: self.inputs.iter().map(uri).collect(),
            resources: self.resources.iter().map(uri).collect(),
            output: self.output.as_ref().map(uri),
            docker,
            ..self.clone()
        }
    }

    /// The spec as a request again: what goes on the wire and into the database.
    pub fn to_request(&self) -> TaskRequest {
        TaskRequest {
            batch: self.batch.to_string(),
            name: self.name.clone(),
            command: self.command.clone(),
            docker_image: self.docker.as_ref().map(|docker| docker.image.clone()),
            docker_options: self
                .docker
                .as_ref()
                .map(|docker| docker.options_text.clone())
                .unwrap_or_default(),
            uid: self.uid,
            gid: self.gid,
            inputs: self.inputs.clone(),
            resources: self.resources.clone(),
            output: self.output.clone(),
            retry: self.retry,
            crash_limit: self.crash_limit,
            run_timeout_secs: self.run_timeout.map(|duration| duration.as_secs()),
            download_timeout_secs: self.download_timeout.map(|duration| duration.as_secs()),
        }
    }

    /// The batch the task belongs to.
    pub fn batch(&self) -> &BatchName {
        &self.batch
    }

    /// A name for humans, not necessarily unique.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// argv, run without a shell; never empty.
    pub fn command(&self) -> &[String] {
        &self.command
    }

    /// The container to run in; `None` runs the command on the worker's host.
    pub fn docker(&self) -> Option<&DockerSpec> {
        self.docker.as_deref()
    }

    /// Run as this user id.
    pub fn uid(&self) -> Option<u32> {
        self.uid
    }

    /// Run as this group id.
    pub fn gid(&self) -> Option<u32> {
        self.gid
    }

    /// URIs copied into `/input` before the command runs.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// URIs fetched once per worker and mounted read-only on `/resource`.
    pub fn resources(&self) -> &[String] {
        &self.resources
    }

    /// Where `/output` is copied after the command, whether it succeeded or failed.
    pub fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }

    /// Automatic retries after a failed attempt.
    pub fn retry(&self) -> u32 {
        self.retry
    }

    /// How many attempts lost with their worker fail the task (reason `crash_limit`); `None`
    /// means no limit (asked with `--crash-limit 0`).
    pub fn crash_limit(&self) -> Option<u32> {
        match self.crash_limit.unwrap_or(DEFAULT_CRASH_LIMIT) {
            0 => None,
            limit => Some(limit),
        }
    }

    /// Kill the command after this long (at least a second).
    pub fn run_timeout(&self) -> Option<Duration> {
        self.run_timeout
    }

    /// Fail the attempt if staging takes longer than this (at least a second).
    pub fn download_timeout(&self) -> Option<Duration> {
        self.download_timeout
    }

    /// What kind of worker may run this task.
    pub fn requirement(&self) -> Requirement {
        match &self.docker {
            None => Requirement::Bare,
            Some(docker) if docker.options.privileged => Requirement::PrivilegedDocker,
            Some(_) => Requirement::Docker,
        }
    }
}

fn check_command(command: &[String]) -> Result<(), Error> {
    if command.first().is_none_or(String::is_empty) {
        return Err(Error::invalid(
            "command",
            "no command given; put it after the options, e.g. `herd launch -- echo hello`",
        ));
    }
    let total: usize = command.iter().map(String::len).sum();
    if total > MAX_COMMAND_BYTES {
        return Err(Error::invalid(
            "command",
            format!(
                "the command is {total} bytes; the limit is {MAX_COMMAND_BYTES}: pass large data as an input"
            ),
        ));
    }
    if command.iter().any(|argument| argument.contains('\0')) {
        return Err(Error::invalid("command", "an argument contains a NUL byte"));
    }
    Ok(())
}

fn timeout(field: &'static str, seconds: Option<u64>) -> Result<Option<Duration>, Error> {
    match seconds {
        Some(0) => Err(Error::invalid(
            field,
            "a timeout must be at least 1 second; leave it out for none",
        )),
        Some(seconds) if seconds > MAX_TIMEOUT_SECS => Err(Error::invalid(
            field,
            format!(
                "{seconds} seconds is more than the limit of {MAX_TIMEOUT_SECS} (30 days); leave it out for none"
            ),
        )),
        other => Ok(other.map(Duration::from_secs)),
    }
}

fn check_docker_options(text: &str) -> Result<(), Error> {
    if text.len() > MAX_DOCKER_OPTIONS_BYTES {
        return Err(Error::invalid(
            "docker options",
            format!(
                "-O is {} bytes long; the limit is {MAX_DOCKER_OPTIONS_BYTES}",
                text.len()
            ),
        ));
    }
    if text.contains('\0') {
        return Err(Error::invalid("docker options", "-O contains a NUL byte"));
    }
    Ok(())
}

fn check_id(field: &'static str, id: Option<u32>) -> Result<(), Error> {
    match id {
        Some(id) if id > MAX_ID => Err(Error::invalid(
            field,
            format!("{id} is not a usable id; the limit is {MAX_ID}"),
        )),
        _ => Ok(()),
    }
}

fn check_uris(request: &TaskRequest) -> Result<(), Error> {
    let counts = [
        ("inputs", request.inputs.len(), MAX_INPUTS),
        ("resources", request.resources.len(), MAX_RESOURCES),
    ];
    for (field, count, limit) in counts {
        if count > limit {
            return Err(Error::invalid(
                field,
                format!(
                    "{count} {field} given; the limit is {limit} a task: pack them into an archive or a folder URI"
                ),
            ));
        }
    }
    let fields = (request.inputs.iter().map(|uri| ("input", uri)))
        .chain(request.resources.iter().map(|uri| ("resource", uri)))
        .chain(request.output.iter().map(|uri| ("output", uri)));
    for (field, uri) in fields {
        if uri.trim().is_empty() {
            return Err(Error::invalid(field, "the URI is empty"));
        }
        if uri.len() > MAX_URI_BYTES {
            return Err(Error::invalid(
                field,
                format!(
                    "the URI is {} bytes long; the limit is {MAX_URI_BYTES}",
                    uri.len()
                ),
            ));
        }
        if uri.contains('\0') {
            return Err(Error::invalid(field, "the URI contains a NUL byte"));
        }
    }
    Ok(())
}

fn docker_spec(image: String, options_text: String) -> Result<DockerSpec, Error> {
    if image.len() > MAX_IMAGE_BYTES {
        return Err(Error::invalid(
            "docker image",
            format!(
                "the image reference is {} bytes long; the limit is {MAX_IMAGE_BYTES}",
                image.len()
            ),
        ));
    }
    if image.trim().is_empty() || image.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(Error::invalid(
            "docker image",
            format!("`{}` is not an image reference", image.escape_debug()),
        ));
    }
    check_docker_options(&options_text)?;
    let options = DockerOptions::parse(&options_text)?;
    Ok(DockerSpec {
        image,
        options_text,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: &[&str]) -> TaskRequest {
        TaskRequest {
            command: command.iter().map(|word| word.to_string()).collect(),
            ..TaskRequest::default()
        }
    }

    #[test]
    fn a_command_is_required() {
        assert!(TaskSpec::new(request(&["true"])).is_ok());
        let error = TaskSpec::new(request(&[])).unwrap_err().to_string();
        assert!(error.contains("no command given"), "{error}");
        let error = TaskSpec::new(request(&["", "x"])).unwrap_err().to_string();
        assert!(error.contains("no command given"), "{error}");
    }

    #[test]
    fn nul_bytes_are_refused_everywhere_they_could_reach_a_process() {
        let error = TaskSpec::new(request(&["echo", "a\0b"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("NUL"), "{error}");
        let mut named = request(&["true"]);
        named.name = Some("a\0".into());
        assert!(TaskSpec::new(named).is_err());
        let mut docker = request(&["true"]);
        docker.docker_image = Some("busy\0box".into());
        assert!(TaskSpec::new(docker).is_err());
    }

    fn refused(request: TaskRequest) -> String {
        TaskSpec::new(request).unwrap_err().to_string()
    }

    #[test]
    fn nul_bytes_are_refused_in_uris_options_and_batch() {
        let mut task = request(&["true"]);
        task.inputs = vec!["s3://b/a\0b".into()];
        assert!(refused(task).starts_with("invalid input: "));
        let mut task = request(&["true"]);
        task.output = Some("/out\0".into());
        assert!(refused(task).contains("NUL"));
        let mut task = request(&["true"]);
        task.docker_image = Some("busybox".into());
        task.docker_options = "--shm-size\u{0}1g".into();
        assert!(refused(task).starts_with("invalid docker options: "));
        let mut task = request(&["true"]);
        task.batch = "b\0".into();
        let error = refused(task);
        assert!(
            error.starts_with("invalid batch: ") && !error.contains('\0'),
            "{error}"
        );
    }

    #[test]
    fn lengths_and_counts_are_bounded() {
        let mut task = request(&["true"]);
        task.resources = vec![format!("s3://b/{}", "a".repeat(MAX_URI_BYTES))];
        assert!(refused(task).contains("the limit is 8192"));
        let mut task = request(&["true"]);
        task.docker_image = Some("busybox".into());
        task.docker_options = format!("--label a={}", "x".repeat(MAX_DOCKER_OPTIONS_BYTES));
        assert!(refused(task).contains("the limit is 16384"));
        let mut task = request(&["true"]);
        task.inputs = vec!["/in".into(); MAX_INPUTS + 1];
        assert!(refused(task).contains("the limit is 10000"));
        let mut task = request(&["true"]);
        task.inputs = vec!["/in".into(); MAX_INPUTS];
        task.resources = vec!["/r".into(); MAX_RESOURCES];
        assert!(TaskSpec::new(task).is_ok());
        let mut task = request(&["true"]);
        task.resources = vec!["/r".into(); MAX_RESOURCES + 1];
        assert!(refused(task).contains("the limit is 1000"));
    }

    #[test]
    fn numbers_are_in_range() {
        let mut task = request(&["true"]);
        task.uid = Some(u32::MAX);
        assert!(refused(task).starts_with("invalid uid: "));
        let mut task = request(&["true"]);
        task.gid = Some(MAX_ID + 1);
        assert!(refused(task).starts_with("invalid gid: "));
        let mut task = request(&["true"]);
        task.uid = Some(MAX_ID);
        task.gid = Some(0);
        assert!(TaskSpec::new(task).is_ok());
        let mut task = request(&["true"]);
        task.retry = MAX_RETRY + 1;
        assert!(refused(task).contains("the limit is 100"));
        let mut task = request(&["true"]);
        task.run_timeout_secs = Some(MAX_TIMEOUT_SECS + 1);
        assert!(refused(task).starts_with("invalid run timeout: "));
        let mut task = request(&["true"]);
        task.download_timeout_secs = Some(MAX_TIMEOUT_SECS);
        assert!(TaskSpec::new(task).is_ok());
        let mut task = request(&["true"]);
        task.crash_limit = Some(MAX_CRASH_LIMIT + 1);
        assert!(refused(task).starts_with("invalid crash limit: "));
        let mut task = request(&["true"]);
        task.crash_limit = Some(MAX_CRASH_LIMIT);
        assert_eq!(
            TaskSpec::new(task).unwrap().crash_limit(),
            Some(MAX_CRASH_LIMIT)
        );
    }

    #[test]
    fn the_crash_limit_defaults_to_three_and_zero_means_none() {
        assert_eq!(
            TaskSpec::new(request(&["true"])).unwrap().crash_limit(),
            Some(DEFAULT_CRASH_LIMIT)
        );
        let mut task = request(&["true"]);
        task.crash_limit = Some(0);
        assert_eq!(TaskSpec::new(task).unwrap().crash_limit(), None);
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let mut task = request(&["true"]);
        task.run_timeout_secs = Some(0);
        assert!(TaskSpec::new(task).is_err());
        let mut task = request(&["true"]);
        task.download_timeout_secs = Some(0);
        assert!(TaskSpec::new(task).is_err());
    }

    #[test]
    fn docker_options_without_an_image_are_refused() {
        let mut task = request(&["true"]);
        task.docker_options = "--gpus all".into();
        let error = TaskSpec::new(task).unwrap_err().to_string();
        assert!(error.contains("needs a Docker image"), "{error}");
    }

    #[test]
    fn requirement_follows_docker_options() {
        let spec = |image: Option<&str>, options: &str| {
            let mut task = request(&["true"]);
            task.docker_image = image.map(str::to_owned);
            task.docker_options = options.to_owned();
            TaskSpec::new(task)
        };
        assert_eq!(spec(None, "").unwrap().requirement(), Requirement::Bare);
        assert_eq!(
            spec(Some("busybox"), "").unwrap().requirement(),
            Requirement::Docker
        );
        assert_eq!(
            spec(Some("busybox"), "--privileged").unwrap().requirement(),
            Requirement::PrivilegedDocker
        );
        assert!(spec(Some("two words"), "").is_err());
    }

    #[test]
    fn a_spec_becomes_the_same_request_again() {
        let task = TaskRequest {
            batch: "b1".into(),
            name: Some("n".into()),
            command: vec!["echo".into(), "hi there".into()],
            docker_image: Some("busybox:latest".into()),
            docker_options: "--shm-size 1g".into(),
            uid: Some(1000),
            gid: Some(1000),
            inputs: vec!["/data/in.txt".into()],
            resources: vec!["s3://b/ref.tar.gz|untar".into()],
            output: Some("/out/".into()),
            retry: 2,
            crash_limit: Some(5),
            run_timeout_secs: Some(30),
            download_timeout_secs: Some(60),
        };
        let spec = TaskSpec::new(task.clone()).unwrap();
        assert_eq!(spec.to_request(), task);
        assert_eq!(TaskSpec::new(spec.to_request()).unwrap(), spec);
    }

    #[test]
    fn a_redacted_spec_hides_secrets_and_is_still_valid() {
        let mut task = request(&["sh", "-c", "echo $TOKEN"]);
        task.docker_image = Some("busybox".into());
        task.docker_options = "-e TOKEN=secret --shm-size 1g".into();
        task.inputs = vec!["ftp://user:pass@host/x".into()];
        task.resources = vec!["https://h/r.tar?sig=abc|untar".into()];
        task.output = Some("s3://b/out/".into());
        let spec = TaskSpec::new(task).unwrap();
        let shown = spec.redacted();
        assert_eq!(
            shown.docker().unwrap().options_text,
            "-e TOKEN=*** --shm-size 1g"
        );
        assert_eq!(shown.inputs(), ["ftp://user:***@host/x"]);
        assert_eq!(shown.resources(), ["https://h/r.tar?sig=***|untar"]);
        assert_eq!(shown.output(), Some("s3://b/out/"));
        assert_eq!(shown.requirement(), spec.requirement());
        let shown_debug = format!("{shown:?}");
        assert!(
            !shown_debug.contains("secret") && !shown_debug.contains("pass@"),
            "{shown_debug}"
        );
        assert_eq!(TaskSpec::new(shown.to_request()).unwrap(), shown);
        assert_eq!(
            spec.docker().unwrap().options_text,
            "-e TOKEN=secret --shm-size 1g"
        );
    }

    #[test]
    fn an_empty_batch_is_the_default_one() {
        let spec = TaskSpec::new(request(&["true"])).unwrap();
        assert_eq!(spec.batch(), &BatchName::default_batch());
        assert_eq!(spec.to_request().batch, "default");
    }
}
