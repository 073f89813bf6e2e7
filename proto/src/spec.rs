//! A validated task specification: what `herd launch` queues.

use std::time::Duration;

use serde::Serialize;

use crate::docker::DockerOptions;
use crate::{BatchName, Error};

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

/// A task as queued. Immutable once the server has accepted it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSpec {
    /// The batch the task belongs to.
    pub batch: BatchName,
    /// A name for humans, not necessarily unique.
    pub name: Option<String>,
    /// argv, run without a shell.
    pub command: Vec<String>,
    /// Run in this container; `None` runs the command on the worker's host. Boxed: most tasks
    /// have none, and a queued task should not carry the ~300 bytes of an empty one.
    pub docker: Option<Box<DockerSpec>>,
    /// Run as this user id.
    pub uid: Option<u32>,
    /// Run as this group id.
    pub gid: Option<u32>,
    /// URIs copied into `/input` before the command runs.
    pub inputs: Vec<String>,
    /// URIs fetched once per worker and mounted read-only on `/resource`.
    pub resources: Vec<String>,
    /// Where `/output` is copied after the command, whether it succeeded or failed.
    pub output: Option<String>,
    /// Automatic retries after a failed attempt.
    pub retry: u32,
    /// Kill the command after this long.
    #[serde(serialize_with = "serialize_seconds")]
    pub run_timeout: Option<Duration>,
    /// Fail the attempt if staging takes longer than this.
    #[serde(serialize_with = "serialize_seconds")]
    pub download_timeout: Option<Duration>,
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

impl TaskSpec {
    /// A bare task in `batch` running `command`, with every option at its default.
    pub fn new(batch: BatchName, command: Vec<String>) -> Self {
        TaskSpec {
            batch,
            name: None,
            command,
            docker: None,
            uid: None,
            gid: None,
            inputs: Vec::new(),
            resources: Vec::new(),
            output: None,
            retry: 0,
            run_timeout: None,
            download_timeout: None,
        }
    }

    /// Checks everything that does not need a worker: a command, valid docker options, sane
    /// timeouts. URIs are checked by `herd launch` (herd-fetch) and again by the worker.
    pub fn validate(&self) -> Result<(), Error> {
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(Error::invalid(
                "command",
                "no command given; put it after the options, e.g. `herd launch -- echo hello`",
            ));
        }
        let total: usize = self.command.iter().map(String::len).sum();
        if total > MAX_COMMAND_BYTES {
            return Err(Error::invalid(
                "command",
                format!(
                    "the command is {total} bytes; the limit is {MAX_COMMAND_BYTES}: pass large data as an input"
                ),
            ));
        }
        if self.command.iter().any(|argument| argument.contains('\0')) {
            return Err(Error::invalid("command", "an argument contains a NUL byte"));
        }
        if let Some(name) = &self.name
            && (name.is_empty() || name.len() > 256)
        {
            return Err(Error::invalid(
                "name",
                "a task name must be 1 to 256 characters",
            ));
        }
        for (field, timeout) in [
            ("run timeout", self.run_timeout),
            ("download timeout", self.download_timeout),
        ] {
            if timeout.is_some_and(|duration| duration.is_zero()) {
                return Err(Error::invalid(
                    field,
                    "a timeout must be at least 1 second; leave it out for none",
                ));
            }
        }
        for uri in self
            .inputs
            .iter()
            .chain(&self.resources)
            .chain(&self.output)
        {
            if uri.trim().is_empty() {
                return Err(Error::invalid(
                    "uri",
                    "an input, resource or output URI is empty",
                ));
            }
        }
        Ok(())
    }

    /// What kind of worker may run this task.
    pub fn requirement(&self) -> Requirement {
        match &self.docker {
            None => Requirement::Bare,
            Some(docker) if docker.options.privileged => Requirement::PrivilegedDocker,
            Some(_) => Requirement::Docker,
        }
    }

    /// Sets the Docker image and options, parsing the options.
    pub fn with_docker(
        mut self,
        image: impl Into<String>,
        options_text: impl Into<String>,
    ) -> Result<Self, Error> {
        let image = image.into();
        if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
            return Err(Error::invalid(
                "docker image",
                format!("`{image}` is not an image reference"),
            ));
        }
        let options_text = options_text.into();
        let options = DockerOptions::parse(&options_text)?;
        self.docker = Some(Box::new(DockerSpec {
            image,
            options_text,
            options,
        }));
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &[&str]) -> TaskSpec {
        TaskSpec::new(
            BatchName::default_batch(),
            command.iter().map(|word| word.to_string()).collect(),
        )
    }

    #[test]
    fn a_command_is_required() {
        assert!(spec(&["true"]).validate().is_ok());
        let error = spec(&[]).validate().unwrap_err().to_string();
        assert!(error.contains("no command given"), "{error}");
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let mut task = spec(&["true"]);
        task.run_timeout = Some(Duration::ZERO);
        assert!(task.validate().is_err());
    }

    #[test]
    fn requirement_follows_docker_options() {
        assert_eq!(spec(&["true"]).requirement(), Requirement::Bare);
        let docker = spec(&["true"]).with_docker("busybox", "").unwrap();
        assert_eq!(docker.requirement(), Requirement::Docker);
        let privileged = spec(&["true"])
            .with_docker("busybox", "--privileged")
            .unwrap();
        assert_eq!(privileged.requirement(), Requirement::PrivilegedDocker);
        assert!(spec(&["true"]).with_docker("two words", "").is_err());
    }
}
