//! `herd launch -O "DOCKER OPTIONS"`: the subset of `docker run` options herd understands.
//!
//! The string is split like a shell would (quotes respected) and every option is checked, so a
//! typo fails at `herd launch` time rather than on a worker hours later. Options herd does not
//! understand are refused by name. `--privileged` is parsed but only a worker started with
//! `--allow-privileged` will run it. What no worker may allow (a mount of the Docker socket,
//! `-e KEY` without a value) is refused here; what a worker may allow is checked by the
//! worker against its [`crate::policy::Policy`].
//!
//! Both `--flag value` and `--flag=value` are accepted; `-e`, `-v`, `--cap-add`,
//! `--cap-drop`, `--device` and `--security-opt` may be repeated and accumulate, any other
//! option given twice keeps its last value (as with `docker run`).
//!
//! # Layout
//! - this file: [`DockerOptions`], the loop over the words, the resource and mount options.
//! - `host_sharing`: the options that share a piece of the host or loosen confinement
//!   (`--cap-add`, `--cap-drop`, `--device`, `--pid`, `--ipc`, `--uts`, `--userns`,
//!   `--security-opt`), with the values each accepts.
//! - `proptests`: property tests of the parser (arbitrary words, both spellings, `-e KEY`).

mod host_sharing;
#[cfg(test)]
mod proptests;

use serde::Serialize;

pub use host_sharing::{Device, SecurityOpt};

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
    /// `--cap-add`: capabilities added, upper case without `CAP_` (`NET_ADMIN`, or `ALL`).
    pub cap_add: Vec<String>,
    /// `--cap-drop`: capabilities removed, in the same form.
    pub cap_drop: Vec<String>,
    /// `--device`: host devices given to the container.
    pub devices: Vec<Device>,
    /// `--pid`: `host` or `container:NAME`.
    pub pid: Option<String>,
    /// `--ipc`: `host`, `private`, `shareable`, `none` or `container:NAME`.
    pub ipc: Option<String>,
    /// `--uts`: `host`.
    pub uts: Option<String>,
    /// `--userns`: `host`.
    pub userns: Option<String>,
    /// `--security-opt`.
    pub security_opt: Vec<SecurityOpt>,
}

/// The options herd understands, for error messages.
pub const SUPPORTED: &str = "--gpus, -e/--env, --shm-size, --network, -m/--memory, --cpus, -v/--volume, \
     -w/--workdir, --entrypoint, --privileged, --cap-add, --cap-drop, --device, --pid, --ipc, \
     --uts, --userns, --security-opt";

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
                "--gpus" | "--shm-size" | "--network" | "--net" | "--cpus" | "--entrypoint"
                | "--cap-add" | "--cap-drop" | "--device" | "--pid" | "--ipc" | "--uts"
                | "--userns" | "--security-opt" => flag.as_str(),
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
            options.set(canonical, value)?;
        }
        Ok(options)
    }

    /// Sets the option `canonical` (a flag's long form) to `value`, checked.
    fn set(&mut self, canonical: &str, value: String) -> Result<(), Error> {
        match canonical {
            "--gpus" => self.gpus = Some(parse_gpus(&value)?),
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
                self.env.push(value);
            }
            "--shm-size" => self.shm_size = Some(parse_size("--shm-size", &value)?),
            "--network" | "--net" => self.network = Some(value),
            "--memory" => self.memory = Some(parse_size("--memory", &value)?),
            "--cpus" => self.nano_cpus = Some(parse_cpus(&value)?),
            "--volume" => self.volumes.push(parse_volume(&value)?),
            "--workdir" => self.workdir = Some(absolute("--workdir", value)?),
            "--entrypoint" => self.entrypoint = Some(value),
            "--cap-add" => self
                .cap_add
                .push(host_sharing::parse_capability(canonical, &value)?),
            "--cap-drop" => self
                .cap_drop
                .push(host_sharing::parse_capability(canonical, &value)?),
            "--device" => self.devices.push(host_sharing::parse_device(&value)?),
            "--pid" => self.pid = Some(host_sharing::parse_namespace(canonical, &value)?),
            "--ipc" => self.ipc = Some(host_sharing::parse_namespace(canonical, &value)?),
            "--uts" => self.uts = Some(host_sharing::parse_namespace(canonical, &value)?),
            "--userns" => {
                self.userns = Some(host_sharing::parse_namespace(canonical, &value)?);
            }
            "--security-opt" => self
                .security_opt
                .push(host_sharing::parse_security_opt(&value)?),
            _ => unreachable!("every canonical flag is matched by `parse`"),
        }
        Ok(())
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
    fn parses_host_sharing_options_in_both_forms_and_accumulates_repeats() {
        let spaced = DockerOptions::parse(
            "--cap-add SYS_ADMIN --cap-add cap_net_admin --cap-drop ALL --device /dev/fuse \
             --device /dev/sdb:/dev/xvdb:r --pid host --ipc private --uts host --userns host \
             --security-opt seccomp=unconfined --security-opt no-new-privileges:false",
        )
        .unwrap();
        let inline = DockerOptions::parse(
            "--cap-add=SYS_ADMIN --cap-add=cap_net_admin --cap-drop=ALL --device=/dev/fuse \
             --device=/dev/sdb:/dev/xvdb:r --pid=host --ipc=private --uts=host --userns=host \
             --security-opt=seccomp:unconfined --security-opt=no-new-privileges=false",
        )
        .unwrap();
        assert_eq!(spaced, inline);
        assert_eq!(spaced.cap_add, vec!["SYS_ADMIN", "NET_ADMIN"]);
        assert_eq!(spaced.cap_drop, vec!["ALL"]);
        assert_eq!(
            spaced.devices,
            vec![
                Device {
                    host: "/dev/fuse".into(),
                    container: "/dev/fuse".into(),
                    permissions: "rwm".into(),
                },
                Device {
                    host: "/dev/sdb".into(),
                    container: "/dev/xvdb".into(),
                    permissions: "r".into(),
                },
            ]
        );
        assert_eq!(spaced.pid.as_deref(), Some("host"));
        assert_eq!(spaced.ipc.as_deref(), Some("private"));
        assert_eq!(spaced.uts.as_deref(), Some("host"));
        assert_eq!(spaced.userns.as_deref(), Some("host"));
        assert_eq!(
            spaced.security_opt,
            vec![
                SecurityOpt::SeccompUnconfined,
                SecurityOpt::NoNewPrivileges(false)
            ]
        );
        // The last of a single-valued option wins, as with `docker run`.
        let twice = DockerOptions::parse("--pid host --pid container:db").unwrap();
        assert_eq!(twice.pid.as_deref(), Some("container:db"));
    }

    #[test]
    fn refuses_bad_host_sharing_values_by_name() {
        for (text, named) in [
            ("--cap-add", "`--cap-add` needs a value"),
            ("--cap-add SYS_ADMINZ", "not a Linux capability"),
            ("--cap-drop=", "`--cap-drop` needs a value"),
            ("--device fuse", "`--device fuse`"),
            ("--device /dev/a:/b:rwx", "HOST[:CONTAINER][:PERMISSIONS]"),
            (
                "--pid private",
                "`--pid private`: give host or container:NAME",
            ),
            ("--uts container:db", "`--uts container:db`: give host"),
            ("--userns=remap", "`--userns remap`"),
            ("--security-opt seccomp=/p.json", "seccomp profile file"),
            (
                "--security-opt foo=bar",
                "not a security option herd passes on",
            ),
        ] {
            let error = DockerOptions::parse(text).unwrap_err().to_string();
            assert!(error.contains(named), "{text}: {error}");
        }
    }

    #[test]
    fn refuses_unknown_and_malformed_options() {
        let error = DockerOptions::parse("--mount type=bind,src=/,dst=/h")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`--mount`") && error.contains("supported"),
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
