//! The `docker run` options that share a piece of the host with a task, or take a protection
//! away: `--cap-add`/`--cap-drop`, `--device`, `--pid`, `--ipc`, `--uts`, `--userns` and
//! `--security-opt`. This module only parses and validates their values; which of them a
//! worker lets a task use is [`crate::policy::Policy::check_docker`]'s business.
//!
//! # Accepted values
//! - `--cap-add`, `--cap-drop`: a Linux capability name, any case, with or without `CAP_`
//!   (`SYS_ADMIN`, `cap_net_admin`), or `ALL`; kept upper case without the prefix.
//! - `--device HOST[:CONTAINER][:PERMISSIONS]`: absolute paths (no `..`, no control
//!   characters), permissions a non-empty set of `r`, `w`, `m` (default `rwm`); the container
//!   path defaults to the host path.
//! - `--pid`: `host` or `container:NAME`. `--ipc`: `host`, `private`, `shareable`, `none` or
//!   `container:NAME`. `--uts`: `host`. `--userns`: `host`. A `NAME` is a container name or id
//!   (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
//! - `--security-opt` (`KEY=VALUE`, or docker's older `KEY:VALUE`): `no-new-privileges`
//!   (alone, `=true` or `=false`), `seccomp=unconfined`, `apparmor=PROFILE`, `label=disable`,
//!   `label=user:…`/`role:…`/`type:…`/`level:…`, `systempaths=unconfined`. A seccomp profile
//!   *file* is refused: the Docker CLI reads such a file on the client, and herd sends options
//!   to an engine on another host, so the file would not be there.

use serde::Serialize;

use crate::Error;

/// The longest value accepted for one of these options: longer is a mistake or an attack.
const MAX_VALUE_BYTES: usize = 4096;

/// The Linux capabilities (`capabilities(7)`), without their `CAP_` prefix.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A host device given to the container with `--device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// The device's path on the host (absolute).
    pub host: String,
    /// Where the container sees it (absolute).
    pub container: String,
    /// The cgroup permissions: some of `r` (read), `w` (write), `m` (mknod).
    pub permissions: String,
}

impl Device {
    /// The option as given on a command line, for messages.
    pub fn shown(&self) -> String {
        format!(
            "--device {}:{}:{}",
            self.host, self.container, self.permissions
        )
    }
}

/// One `--security-opt`, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SecurityOpt {
    /// `no-new-privileges[=true|false]`. herd sets `true` on every container anyway.
    NoNewPrivileges(bool),
    /// `seccomp=unconfined`: no system call filter.
    SeccompUnconfined,
    /// `apparmor=PROFILE`: a profile loaded on the host, or `unconfined`.
    AppArmor(String),
    /// `label=disable` or `label=user:…` (and `role`, `type`, `level`): SELinux labelling.
    Label(String),
    /// `systempaths=unconfined`: `/proc` and `/sys` paths docker masks become visible.
    SystemPathsUnconfined,
}

impl SecurityOpt {
    /// The value the engine's `SecurityOpt` takes (`KEY=VALUE`).
    pub fn engine_value(&self) -> String {
        match self {
            SecurityOpt::NoNewPrivileges(value) => format!("no-new-privileges={value}"),
            SecurityOpt::SeccompUnconfined => "seccomp=unconfined".to_owned(),
            SecurityOpt::AppArmor(profile) => format!("apparmor={profile}"),
            SecurityOpt::Label(label) => format!("label={label}"),
            SecurityOpt::SystemPathsUnconfined => "systempaths=unconfined".to_owned(),
        }
    }

    /// Whether this option loosens the container's confinement: every form except
    /// `no-new-privileges[=true]` and `apparmor=docker-default` (docker's own profile). A
    /// named AppArmor profile or an SELinux label is a choice herd cannot vouch for, so it
    /// counts as unconfined.
    pub fn loosens_confinement(&self) -> bool {
        match self {
            SecurityOpt::NoNewPrivileges(value) => !value,
            SecurityOpt::AppArmor(profile) => profile != "docker-default",
            SecurityOpt::SeccompUnconfined
            | SecurityOpt::Label(_)
            | SecurityOpt::SystemPathsUnconfined => true,
        }
    }
}

fn invalid(message: String) -> Error {
    Error::invalid("docker options", message)
}

/// Refuses values that are empty, too long, or hold control characters (NUL among them).
fn plain<'a>(flag: &str, value: &'a str) -> Result<&'a str, Error> {
    if value.is_empty() {
        return Err(invalid(format!("`{flag}` needs a value")));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(invalid(format!(
            "`{flag}` has a value of {} bytes; at most {MAX_VALUE_BYTES} are accepted",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!(
            "`{flag}` has a control character in its value; remove it"
        )));
    }
    Ok(value)
}

/// `--cap-add` or `--cap-drop`: a capability name, returned upper case without `CAP_`.
pub(super) fn parse_capability(flag: &str, value: &str) -> Result<String, Error> {
    let value = plain(flag, value)?;
    let upper = value.to_ascii_uppercase();
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if name == "ALL" || CAPABILITIES.contains(&name) {
        return Ok(name.to_owned());
    }
    Err(invalid(format!(
        "`{flag} {value}` is not a Linux capability; give a name such as NET_ADMIN or \
         CAP_SYS_PTRACE (see capabilities(7)), or ALL"
    )))
}

/// `--device HOST[:CONTAINER][:PERMISSIONS]`.
pub(super) fn parse_device(value: &str) -> Result<Device, Error> {
    let value = plain("--device", value)?;
    let usage = || {
        invalid(format!(
            "`--device {value}`: use HOST[:CONTAINER][:PERMISSIONS] with absolute paths and \
             permissions made of r, w and m (e.g. /dev/fuse or /dev/sdb:/dev/xvdb:r)"
        ))
    };
    let parts: Vec<&str> = value.split(':').collect();
    let (host, container, permissions) = match parts.as_slice() {
        [host] => (*host, *host, "rwm"),
        [host, second] if is_permissions(second) => (*host, *host, *second),
        [host, container] => (*host, *container, "rwm"),
        [host, container, permissions] => (*host, *container, *permissions),
        _ => return Err(usage()),
    };
    let absolute =
        |path: &str| path.starts_with('/') && !path.split('/').any(|component| component == "..");
    if !absolute(host) || !absolute(container) || !is_permissions(permissions) {
        return Err(usage());
    }
    Ok(Device {
        host: host.to_owned(),
        container: container.to_owned(),
        permissions: permissions.to_owned(),
    })
}

/// A non-empty set of `r`, `w` and `m`, each at most once.
fn is_permissions(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 3
        && text.chars().all(|letter| matches!(letter, 'r' | 'w' | 'm'))
        && ['r', 'w', 'm']
            .iter()
            .all(|letter| text.matches(*letter).count() <= 1)
}

/// `--pid`, `--ipc`, `--uts` or `--userns`: the namespace mode, checked against what docker
/// accepts for each.
pub(super) fn parse_namespace(flag: &str, value: &str) -> Result<String, Error> {
    let value = plain(flag, value)?;
    let (modes, joins_containers): (&[&str], bool) = match flag {
        "--pid" => (&["host"], true),
        "--ipc" => (&["host", "private", "shareable", "none"], true),
        "--uts" | "--userns" => (&["host"], false),
        _ => unreachable!("only namespace flags are parsed here"),
    };
    if modes.contains(&value) {
        return Ok(value.to_owned());
    }
    if let Some(name) = value.strip_prefix("container:")
        && joins_containers
    {
        if is_container_name(name) {
            return Ok(value.to_owned());
        }
        return Err(invalid(format!(
            "`{flag} {value}`: `{name}` is not a container name or id \
             ([A-Za-z0-9][A-Za-z0-9_.-]*)"
        )));
    }
    let mut accepted: Vec<&str> = modes.to_vec();
    if joins_containers {
        accepted.push("container:NAME");
    }
    Err(invalid(format!(
        "`{flag} {value}`: give {}",
        accepted.join(" or ")
    )))
}

fn is_container_name(name: &str) -> bool {
    let mut characters = name.chars();
    name.len() <= 255
        && characters
            .next()
            .is_some_and(|first| first.is_ascii_alphanumeric())
        && characters.all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '-')
        })
}

/// `--security-opt KEY=VALUE` (or `KEY:VALUE`, or `no-new-privileges` alone).
pub(super) fn parse_security_opt(value: &str) -> Result<SecurityOpt, Error> {
    let value = plain("--security-opt", value)?;
    if value == "no-new-privileges" {
        return Ok(SecurityOpt::NoNewPrivileges(true));
    }
    // Docker splits on the first `=`, and only when there is none on the first `:`.
    let split = value
        .split_once('=')
        .or_else(|| value.split_once(':'))
        .filter(|(_, option)| !option.is_empty());
    let unknown = || {
        invalid(format!(
            "`--security-opt {value}` is not a security option herd passes on; supported: \
             no-new-privileges[=true|false], seccomp=unconfined, apparmor=PROFILE, \
             label=disable, label=user:|role:|type:|level:VALUE, systempaths=unconfined"
        ))
    };
    let Some((key, option)) = split else {
        return Err(unknown());
    };
    match (key, option) {
        ("no-new-privileges", "true") => Ok(SecurityOpt::NoNewPrivileges(true)),
        ("no-new-privileges", "false") => Ok(SecurityOpt::NoNewPrivileges(false)),
        ("seccomp", "unconfined") => Ok(SecurityOpt::SeccompUnconfined),
        ("seccomp", profile) => Err(invalid(format!(
            "`--security-opt seccomp={profile}`: herd cannot send a seccomp profile file (the \
             Docker CLI reads it on the client, and the task runs on another host); leave \
             docker's default profile, or give seccomp=unconfined on a worker that allows it"
        ))),
        ("apparmor", profile) if is_container_name(profile) => {
            Ok(SecurityOpt::AppArmor(profile.to_owned()))
        }
        ("label", "disable") => Ok(SecurityOpt::Label("disable".to_owned())),
        ("label", label)
            if ["user:", "role:", "type:", "level:"]
                .iter()
                .any(|prefix| label.starts_with(prefix))
                && !label.contains(char::is_whitespace) =>
        {
            Ok(SecurityOpt::Label(label.to_owned()))
        }
        ("systempaths", "unconfined") => Ok(SecurityOpt::SystemPathsUnconfined),
        _ => Err(unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_normalised_and_checked() {
        for (given, kept) in [
            ("SYS_ADMIN", "SYS_ADMIN"),
            ("CAP_SYS_ADMIN", "SYS_ADMIN"),
            ("cap_net_admin", "NET_ADMIN"),
            ("all", "ALL"),
        ] {
            assert_eq!(parse_capability("--cap-add", given).unwrap(), kept);
        }
        for bad in [
            "",
            "SYS_ADMINS",
            "CAP_",
            "NET ADMIN",
            "SYS_ADMIN\u{0}",
            "CAP_ALL2",
        ] {
            let error = parse_capability("--cap-add", bad).unwrap_err().to_string();
            assert!(error.contains("--cap-add"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn devices_take_absolute_paths_and_permissions() {
        let device = |text: &str| {
            let device = parse_device(text).unwrap();
            (device.host, device.container, device.permissions)
        };
        let owned = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(device("/dev/fuse"), owned("/dev/fuse", "/dev/fuse", "rwm"));
        assert_eq!(device("/dev/sdb:r"), owned("/dev/sdb", "/dev/sdb", "r"));
        assert_eq!(
            device("/dev/sdb:/dev/xvdb"),
            owned("/dev/sdb", "/dev/xvdb", "rwm")
        );
        assert_eq!(
            device("/dev/sdb:/dev/x:mw"),
            owned("/dev/sdb", "/dev/x", "mw")
        );
        for bad in [
            "",
            "fuse",
            "/dev/a:b",
            "/dev/a:/b:rr",
            "/dev/a:/b:x",
            "/dev/a:/b:r:w",
            "/dev/../etc/shadow",
            "/dev/a:/b/../c",
            "/dev/a\u{0}",
        ] {
            assert!(parse_device(bad).is_err(), "{bad:?}");
        }
        assert!(parse_device(&format!("/{}", "d".repeat(MAX_VALUE_BYTES))).is_err());
    }

    #[test]
    fn namespace_modes_are_those_docker_accepts() {
        for (flag, value) in [
            ("--pid", "host"),
            ("--pid", "container:db"),
            ("--ipc", "host"),
            ("--ipc", "private"),
            ("--ipc", "shareable"),
            ("--ipc", "none"),
            ("--ipc", "container:0a1b2c"),
            ("--uts", "host"),
            ("--userns", "host"),
        ] {
            assert_eq!(parse_namespace(flag, value).unwrap(), value);
        }
        for (flag, value) in [
            ("--pid", "private"),
            ("--pid", "container:"),
            ("--pid", "container:a b"),
            ("--ipc", "container:../x"),
            ("--uts", "container:db"),
            ("--userns", "private"),
            ("--userns", ""),
        ] {
            let error = parse_namespace(flag, value).unwrap_err().to_string();
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
        let error = parse_namespace("--ipc", "shared").unwrap_err().to_string();
        assert!(
            error.contains("host or private or shareable or none or container:NAME"),
            "{error}"
        );
    }

    #[test]
    fn security_options_in_both_spellings() {
        for (given, parsed) in [
            ("no-new-privileges", SecurityOpt::NoNewPrivileges(true)),
            ("no-new-privileges=true", SecurityOpt::NoNewPrivileges(true)),
            (
                "no-new-privileges:false",
                SecurityOpt::NoNewPrivileges(false),
            ),
            ("seccomp=unconfined", SecurityOpt::SeccompUnconfined),
            ("seccomp:unconfined", SecurityOpt::SeccompUnconfined),
            (
                "apparmor=unconfined",
                SecurityOpt::AppArmor("unconfined".into()),
            ),
            (
                "apparmor:docker-default",
                SecurityOpt::AppArmor("docker-default".into()),
            ),
            ("label=disable", SecurityOpt::Label("disable".into())),
            ("label:disable", SecurityOpt::Label("disable".into())),
            ("label=type:spc_t", SecurityOpt::Label("type:spc_t".into())),
            ("systempaths=unconfined", SecurityOpt::SystemPathsUnconfined),
        ] {
            assert_eq!(parse_security_opt(given).unwrap(), parsed, "{given}");
        }
        let error = parse_security_opt("seccomp=/etc/profile.json")
            .unwrap_err()
            .to_string();
        assert!(error.contains("seccomp profile file"), "{error}");
        for bad in [
            "",
            "no-new-privileges=maybe",
            "seccomp=",
            "apparmor=a/b",
            "label=foo",
            "label=user:a b",
            "systempaths=masked",
            "privileged",
            "unconfined",
        ] {
            assert!(parse_security_opt(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_the_defaults_keep_confinement() {
        let harmless = [
            SecurityOpt::NoNewPrivileges(true),
            SecurityOpt::AppArmor("docker-default".into()),
        ];
        assert!(harmless.iter().all(|option| !option.loosens_confinement()));
        let loosening = [
            SecurityOpt::NoNewPrivileges(false),
            SecurityOpt::SeccompUnconfined,
            SecurityOpt::AppArmor("unconfined".into()),
            SecurityOpt::AppArmor("my-profile".into()),
            SecurityOpt::Label("disable".into()),
            SecurityOpt::Label("level:s0:c1".into()),
            SecurityOpt::SystemPathsUnconfined,
        ];
        assert!(loosening.iter().all(SecurityOpt::loosens_confinement));
        assert_eq!(
            SecurityOpt::NoNewPrivileges(false).engine_value(),
            "no-new-privileges=false"
        );
    }
}
