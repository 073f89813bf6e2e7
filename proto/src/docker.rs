//! `herd launch -O "DOCKER OPTIONS"`: the subset of `docker run` options herd understands.
//!
//! The string is split like a shell would (quotes respected) and every option is checked, so a
//! typo fails at `herd launch` time rather than on a worker hours later. Options herd does not
//! understand are refused by name. `--privileged` is parsed but only a worker started with
//! `--allow-privileged` will run it. What no worker may allow (a mount of the Docker socket,
//! `-e KEY` without a value) is refused here; what a worker may allow is checked by the
//! worker against its [`crate::policy::Policy`].

use serde::Serialize;

use crate::Error;

/// A bind mount given with `-v SRC:DST[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// Host path (absolute) or named volume.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The parsed form of `-O`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DockerOptions {
    /// `--gpus`: `all`, a count, or `device=0,1`.
    pub gpus: Option<String>,
    /// `-e/--env`: `KEY=VALUE` (never `KEY` alone: a worker's environment stays its own).
    pub env: Vec<String>,
    /// `--shm-size`, in bytes.
    pub shm_size: Option<i64>,
    /// `--network`: `bridge`, `host`, `none` or a network name.
    pub network: Option<String>,
    /// `-m/--memory`, in bytes.
    pub memory: Option<i64>,
    /// `--cpus`, in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// `-v/--volume` extra mounts.
    pub volumes: Vec<Volume>,
    /// `--privileged`.
    pub privileged: bool,
    /// `-w/--workdir`.
    pub workdir: Option<String>,
    /// `--entrypoint`.
    pub entrypoint: Option<String>,
}

/// The options herd understands, for error messages.
pub const SUPPORTED: &str = "--gpus, -e/--env, --shm-size, --network, -m/--memory, --cpus, -v/--volume, \
     -w/--workdir, --entrypoint, --privileged";

impl DockerOptions {
    /// Parses an option string such as `--gpus all -e KEY=value --shm-size 2g`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let words = shlex::split(text).ok_or_else(|| {
            Error::invalid(
                "docker options",
                format!("cannot split `{text}`: a quote is not closed"),
            )
        })?;
        let mut options = DockerOptions::default();
        let mut words = words.into_iter();
        while let Some(word) = words.next() {
            let (flag, inline_value) = match word.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_owned(), Some(value.to_owned()))
                }
                _ => (word.clone(), None),
            };
            if flag == "--privileged" {
                if inline_value.as_deref().is_some_and(|value| value != "true") {
                    return Err(Error::invalid(
                        "docker options",
                        "--privileged takes no value",
                    ));
                }
                options.privileged = true;
                continue;
            }
            let canonical = match flag.as_str() {
                "--gpus" | "--shm-size" | "--network" | "--net" | "--cpus" | "--entrypoint" => {
                    flag.as_str()
                }
                "-e" | "--env" => "--env",
                "-m" | "--memory" => "--memory",
                "-v" | "--volume" => "--volume",
                "-w" | "--workdir" => "--workdir",
                _ => {
                    return Err(Error::invalid(
                        "docker options",
                        format!(
                            "herd does not understand the docker option `{word}`; supported: {SUPPORTED}"
                        ),
                    ));
                }
            };
            let value = match inline_value {
                Some(value) => value,
                None => words.next().ok_or_else(|| {
                    Error::invalid("docker options", format!("`{flag}` needs a value"))
                })?,
            };
            match canonical {
                "--gpus" => options.gpus = Some(parse_gpus(&value)?),
                "--env" => {
                    if value.is_empty() || value.starts_with('=') {
                        return Err(Error::invalid(
                            "docker options",
                            format!("`-e {value}`: give KEY=VALUE"),
                        ));
                    }
                    if !value.contains('=') {
                        return Err(Error::invalid(
                            "docker options",
                            format!(
                                "`-e {value}` would pass the worker's own `{value}` into the \
                                 task, which herd never does: give a value, `-e {value}=VALUE`"
                            ),
                        ));
                    }
                    options.env.push(value);
                }
                "--shm-size" => options.shm_size = Some(parse_size("--shm-size", &value)?),
                "--network" | "--net" => options.network = Some(value),
                "--memory" => options.memory = Some(parse_size("--memory", &value)?),
                "--cpus" => options.nano_cpus = Some(parse_cpus(&value)?),
                "--volume" => options.volumes.push(parse_volume(&value)?),
                "--workdir" => options.workdir = Some(absolute("--workdir", value)?),
                "--entrypoint" => options.entrypoint = Some(value),
                _ => unreachable!("every canonical flag is matched above"),
            }
        }
        Ok(options)
    }
}

fn absolute(flag: &str, path: String) -> Result<String, Error> {
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(Error::invalid(
            "docker options",
            format!("`{flag} {path}`: the path must be absolute"),
        ))
    }
}

fn parse_gpus(value: &str) -> Result<String, Error> {
    let valid = value == "all"
        || value.parse::<u32>().is_ok_and(|count| count > 0)
        || value.starts_with("device=");
    if valid {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            "docker options",
            format!("`--gpus {value}`: use all, a count, or device=0,1"),
        ))
    }
}

fn parse_cpus(value: &str) -> Result<i64, Error> {
    match value.parse::<f64>() {
        Ok(cpus) if cpus > 0.0 && cpus.is_finite() => Ok((cpus * 1e9).round() as i64),
        _ => Err(Error::invalid(
            "docker options",
            format!("`--cpus {value}`: give a positive number such as 1.5"),
        )),
    }
}

/// Parses a docker size: a number with an optional b, k, m or g suffix (powers of 1024).
pub fn parse_size(flag: &str, value: &str) -> Result<i64, Error> {
    let lower = value.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let multiplier: i64 = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(count) if count > 0 && multiplier > 0 => {
            count.checked_mul(multiplier).ok_or_else(|| {
                Error::invalid("docker options", format!("`{flag} {value}` is too large"))
            })
        }
        _ => Err(Error::invalid(
            "docker options",
            format!("`{flag} {value}`: give a size such as 512m or 2g"),
        )),
    }
}

fn parse_volume(value: &str) -> Result<Volume, Error> {
    let parts: Vec<&str> = value.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [source, target] => (*source, *target, None),
        [source, target, mode] => (*source, *target, Some(*mode)),
        _ => {
            return Err(Error::invalid(
                "docker options",
                format!("`-v {value}`: use SOURCE:TARGET[:ro|rw]"),
            ));
        }
    };
    if source.is_empty() || !target.starts_with('/') {
        return Err(Error::invalid(
            "docker options",
            format!("`-v {value}`: the source must not be empty and the target must be absolute"),
        ));
    }
    if ["/input", "/output", "/resource", "/tmp"].contains(&target.trim_end_matches('/')) {
        return Err(Error::invalid(
            "docker options",
            format!("`-v {value}`: {target} is herd's own mount; choose another target"),
        ));
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(Error::invalid(
                "docker options",
                format!("`-v {value}`: mode `{other}` is not ro or rw"),
            ));
        }
    };
    let volume = Volume {
        source: source.to_owned(),
        target: target.to_owned(),
        read_only,
    };
    match crate::policy::docker_socket_mount(&volume) {
        Some(refusal) => Err(Error::invalid("docker options", refusal.0)),
        None => Ok(volume),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_options() {
        let options = DockerOptions::parse(
            "--gpus all -e A=1 --env=B='two words' --shm-size 2g --network host -m 512m --cpus 1.5 \
             -v /data:/data:ro -w /work --privileged",
        )
        .unwrap();
        assert_eq!(options.gpus.as_deref(), Some("all"));
        assert_eq!(
            options.env,
            vec!["A=1".to_owned(), "B=two words".to_owned()]
        );
        assert_eq!(options.shm_size, Some(2 << 30));
        assert_eq!(options.network.as_deref(), Some("host"));
        assert_eq!(options.memory, Some(512 << 20));
        assert_eq!(options.nano_cpus, Some(1_500_000_000));
        assert_eq!(options.volumes.len(), 1);
        assert!(options.volumes[0].read_only);
        assert_eq!(options.workdir.as_deref(), Some("/work"));
        assert!(options.privileged);
    }

    #[test]
    fn refuses_unknown_and_malformed_options() {
        let error = DockerOptions::parse("--cap-add SYS_ADMIN")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`--cap-add`") && error.contains("supported"),
            "{error}"
        );
        assert!(DockerOptions::parse("--memory lots").is_err());
        assert!(DockerOptions::parse("--cpus -1").is_err());
        assert!(DockerOptions::parse("-v relative").is_err());
        assert!(DockerOptions::parse("-v /a:/output").is_err());
        assert!(DockerOptions::parse("--gpus").is_err());
        assert!(DockerOptions::parse("-e 'unterminated").is_err());
        let error = DockerOptions::parse("-e AWS_SECRET_ACCESS_KEY")
            .unwrap_err()
            .to_string();
        assert!(error.contains("give a value"), "{error}");
        let error = DockerOptions::parse("-v /run:/r").unwrap_err().to_string();
        assert!(error.contains("Docker socket"), "{error}");
        assert_eq!(DockerOptions::parse("").unwrap(), DockerOptions::default());
    }
}
