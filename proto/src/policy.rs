//! What a task may take of its worker's host: the worker's [`Policy`].
//!
//! A worker runs other people's commands. By default a task gets its own folders, its `-O`
//! options that touch nothing of the host, and nothing else: no host folder, no named volume,
//! no host namespace, no root on a bare worker, none of the worker's environment. A worker
//! opts into more with flags (`herd worker --allow-volume /data`, `--allow-named-volumes`,
//! `--allow-docker-option network=host`, `--allow-root`, `--pass-env NAME`), which fill in a
//! [`Policy`].
//!
//! # Docker options by name
//! Each of these needs `--allow-docker-option NAME` ([`DockerOption`]): `--network host`
//! (`network=host`), `--network container:…` (`network=container`), `--pid host`
//! (`pid=host`), `--pid container:…` (`pid=container`), `--ipc host` (`ipc=host`),
//! `--ipc container:…` (`ipc=container`), `--uts host` (`uts=host`), `--userns host`
//! (`userns=host`), any `--cap-add` (`cap-add`), any `--device` (`device`), and a
//! `--security-opt` that loosens confinement (`security-opt=unconfined`: `seccomp=unconfined`,
//! `apparmor=` anything but `docker-default`, any `label=`, `systempaths=unconfined`,
//! `no-new-privileges=false`). Allowed without a flag, because they take nothing of the host:
//! `--gpus`, `--cap-drop`, `--ipc private|shareable|none`, `--network bridge|none|NAME`,
//! `--security-opt no-new-privileges[=true]` and `apparmor=docker-default`.
//!
//! # Where each check runs
//! - **Never allowed** (no flag can allow them): a mount of the Docker socket or of a folder
//!   that contains it ([`docker_socket_mount`]), `-e KEY` without a value (the worker's own
//!   environment must not leak into a task), options herd does not understand. The `-O`
//!   parser refuses these, so `herd launch`, the server and the worker all refuse them.
//! - **Allowed by a worker flag**: everything else [`Policy::check_docker`] and
//!   [`Policy::check_user`] refuse. `herd launch` does not know which worker will take the
//!   task, so it does not check them; the worker checks them when it receives the task and
//!   fails the attempt at once (reason `executor`, no container started) with a message that
//!   names the option and the flag that would allow it.
//! - `--privileged` stays governed by the worker's `--allow-privileged` (the server only sends
//!   such tasks to workers that allow it).

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::Error;
use crate::docker::{DockerOptions, Volume};

/// Where container engines listen on Linux hosts (`/var/run` is a link to `/run`): Docker's,
/// and containerd's and podman's, which give the same power over the host.
pub const DOCKER_SOCKETS: [&str; 6] = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/containerd/containerd.sock",
    "/run/containerd/containerd.sock",
    "/var/run/podman/podman.sock",
    "/run/podman/podman.sock",
];

/// File names of engine sockets, refused wherever they are (rootless engines listen under
/// `$XDG_RUNTIME_DIR`, e.g. `/run/user/1000/docker.sock`).
const SOCKET_NAMES: [&str; 3] = ["docker.sock", "containerd.sock", "podman.sock"];

/// A `docker run` option a worker may allow by name with `--allow-docker-option NAME`.
///
/// `cap-add` allows any capability (`--cap-add ALL` included): a worker that trusts its tasks
/// with one capability that reaches the host usually trusts them with the host. `device`
/// allows any host device. `security-opt=unconfined` allows every `--security-opt` that
/// loosens confinement ([`crate::docker::SecurityOpt::loosens_confinement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DockerOption {
    /// `--network host`: the host's network stack.
    NetworkHost,
    /// `--network container:NAME`: another container's network stack.
    NetworkContainer,
    /// `--pid host`: every process of the host, visible and signalable.
    PidHost,
    /// `--pid container:NAME`: another container's processes.
    PidContainer,
    /// `--ipc host`: the host's shared memory and semaphores.
    IpcHost,
    /// `--ipc container:NAME`: another container's shared memory.
    IpcContainer,
    /// `--uts host`: the host's hostname, which the task may then change.
    UtsHost,
    /// `--userns host`: no user namespace remapping, where the engine remaps.
    UsernsHost,
    /// `--cap-add CAPABILITY`: any capability beyond docker's default set.
    CapAdd,
    /// `--device HOST[:CONTAINER[:PERMISSIONS]]`: any host device.
    Device,
    /// `--security-opt` that loosens confinement: `seccomp=unconfined`, `apparmor=PROFILE`
    /// other than `docker-default`, any `label=…`, `systempaths=unconfined`, and
    /// `no-new-privileges=false` (which drops the `no-new-privileges` herd sets).
    SecurityOptUnconfined,
}

impl DockerOption {
    /// Every name `--allow-docker-option` accepts.
    pub const ALL: [DockerOption; 11] = [
        DockerOption::NetworkHost,
        DockerOption::NetworkContainer,
        DockerOption::PidHost,
        DockerOption::PidContainer,
        DockerOption::IpcHost,
        DockerOption::IpcContainer,
        DockerOption::UtsHost,
        DockerOption::UsernsHost,
        DockerOption::CapAdd,
        DockerOption::Device,
        DockerOption::SecurityOptUnconfined,
    ];

    /// The name given to `--allow-docker-option`.
    pub fn name(self) -> &'static str {
        match self {
            DockerOption::NetworkHost => "network=host",
            DockerOption::NetworkContainer => "network=container",
            DockerOption::PidHost => "pid=host",
            DockerOption::PidContainer => "pid=container",
            DockerOption::IpcHost => "ipc=host",
            DockerOption::IpcContainer => "ipc=container",
            DockerOption::UtsHost => "uts=host",
            DockerOption::UsernsHost => "userns=host",
            DockerOption::CapAdd => "cap-add",
            DockerOption::Device => "device",
            DockerOption::SecurityOptUnconfined => "security-opt=unconfined",
        }
    }

    /// The names, comma-separated, for messages.
    pub fn names() -> String {
        DockerOption::ALL.map(DockerOption::name).join(", ")
    }

    /// The option a namespace mode (`--network`, `--pid`, `--ipc`, `--uts`, `--userns`)
    /// needs, if any: `host` and `container:NAME` share, the other modes do not.
    fn for_namespace(flag: &str, mode: &str) -> Option<DockerOption> {
        let joins_container = mode.starts_with("container:");
        match (flag, mode == "host", joins_container) {
            ("--network", true, _) => Some(DockerOption::NetworkHost),
            ("--network", _, true) => Some(DockerOption::NetworkContainer),
            ("--pid", true, _) => Some(DockerOption::PidHost),
            ("--pid", _, true) => Some(DockerOption::PidContainer),
            ("--ipc", true, _) => Some(DockerOption::IpcHost),
            ("--ipc", _, true) => Some(DockerOption::IpcContainer),
            ("--uts", true, _) => Some(DockerOption::UtsHost),
            ("--userns", true, _) => Some(DockerOption::UsernsHost),
            _ => None,
        }
    }
}

impl fmt::Display for DockerOption {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl std::str::FromStr for DockerOption {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        DockerOption::ALL
            .into_iter()
            .find(|option| option.name() == text)
            .ok_or_else(|| {
                Error::invalid(
                    "docker option",
                    format!(
                        "`{text}` is not an option a worker can allow; choose among: {}",
                        DockerOption::names()
                    ),
                )
            })
    }
}

/// What a worker allows its tasks to take of its host. The default allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Host folders (absolute, normalised) that `-v` may mount, with everything under them.
    pub volume_prefixes: Vec<PathBuf>,
    /// `-v NAME:/target` with a named volume.
    pub named_volumes: bool,
    /// Host-sharing docker options allowed by name.
    pub docker_options: Vec<DockerOption>,
    /// Bare tasks may run as uid 0 or gid 0.
    pub root: bool,
    /// Names of the worker's environment variables that bare tasks receive.
    pub pass_env: Vec<String>,
}

impl Policy {
    /// Adds a host folder `-v` may mount: it must be absolute, and must not be or contain the
    /// Docker socket.
    pub fn allow_volume(&mut self, prefix: &str) -> Result<(), Error> {
        if !prefix.starts_with('/') {
            return Err(Error::invalid(
                "--allow-volume",
                format!("`{prefix}` is not an absolute path"),
            ));
        }
        let normal = normalise(Path::new(prefix));
        if reaches_docker_socket(&normal) {
            return Err(Error::invalid(
                "--allow-volume",
                format!(
                    "`{prefix}` is or contains the Docker socket, which no task may mount; \
                     allow a narrower folder"
                ),
            ));
        }
        self.volume_prefixes.push(normal);
        Ok(())
    }

    /// Adds a worker environment variable that bare tasks receive.
    pub fn pass_env(&mut self, name: &str) -> Result<(), Error> {
        let mut characters = name.chars();
        let valid = characters
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && characters.all(|character| character.is_ascii_alphanumeric() || character == '_');
        if !valid {
            return Err(Error::invalid(
                "--pass-env",
                format!("`{name}` is not an environment variable name (letters, digits, _)"),
            ));
        }
        self.pass_env.push(name.to_owned());
        Ok(())
    }

    /// Checks a Docker task's options. `resolve` gives the real path of a host path when the
    /// worker can see it (symbolic links followed), so a link under an allowed folder cannot
    /// lead outside it; a mount is allowed only if both its lexical and its real path are.
    /// The worker then mounts the real path it checked; `herd launch` passes `|_| None`.
    pub fn check_docker(
        &self,
        options: &DockerOptions,
        resolve: impl Fn(&Path) -> Option<PathBuf>,
    ) -> Result<(), Refusal> {
        for volume in &options.volumes {
            self.check_volume(volume, &resolve)?;
        }
        let namespaces = [
            ("--network", &options.network),
            ("--pid", &options.pid),
            ("--ipc", &options.ipc),
            ("--uts", &options.uts),
            ("--userns", &options.userns),
        ];
        for (flag, mode) in namespaces {
            let Some(mode) = mode.as_deref() else {
                continue;
            };
            if let Some(needed) = DockerOption::for_namespace(flag, mode) {
                self.require(
                    needed,
                    &format!("{flag} {mode}"),
                    if mode.starts_with("container:") {
                        "shares another container's namespace"
                    } else {
                        "shares a namespace of the host"
                    },
                )?;
            }
        }
        for capability in &options.cap_add {
            self.require(
                DockerOption::CapAdd,
                &format!("--cap-add {capability}"),
                "gives the task a capability docker withholds, a power over the host",
            )?;
        }
        for device in &options.devices {
            self.require(
                DockerOption::Device,
                &device.shown(),
                "gives the task a device of the host",
            )?;
        }
        for security in &options.security_opt {
            if security.loosens_confinement() {
                self.require(
                    DockerOption::SecurityOptUnconfined,
                    &format!("--security-opt {}", security.engine_value()),
                    "loosens the container's confinement",
                )?;
            }
        }
        Ok(())
    }

    /// Refuses `shown` (the option as given) unless the worker allows `needed`.
    fn require(&self, needed: DockerOption, shown: &str, what: &str) -> Result<(), Refusal> {
        if self.docker_options.contains(&needed) {
            return Ok(());
        }
        Err(Refusal(format!(
            "`{shown}` {what}: a worker allows it with \
             `herd worker --allow-docker-option {needed}`"
        )))
    }

    /// Checks the user a bare task runs as.
    pub fn check_user(&self, uid: Option<u32>, gid: Option<u32>) -> Result<(), Refusal> {
        if self.root {
            return Ok(());
        }
        if uid == Some(0) {
            return Err(Refusal(
                "`-u 0` runs the task as root on the worker's host: a worker allows it with \
                 `herd worker --allow-root`"
                    .to_owned(),
            ));
        }
        if gid == Some(0) {
            return Err(Refusal(
                "`-g 0` runs the task in the root group on the worker's host: a worker allows \
                 it with `herd worker --allow-root`"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    fn check_volume(
        &self,
        volume: &Volume,
        resolve: &impl Fn(&Path) -> Option<PathBuf>,
    ) -> Result<(), Refusal> {
        let shown = volume_text(volume);
        if is_named_volume(&volume.source) {
            if self.named_volumes {
                return Ok(());
            }
            return Err(Refusal(format!(
                "`{shown}` mounts a named volume: a worker allows it with \
                 `herd worker --allow-named-volumes`"
            )));
        }
        if !volume.source.starts_with('/') {
            return Err(Refusal(format!(
                "`{shown}` mounts a relative host path: give an absolute path under a folder \
                 the worker allows with `herd worker --allow-volume`"
            )));
        }
        if let Some(refusal) = docker_socket_mount(volume) {
            return Err(refusal);
        }
        let normal = normalise(Path::new(&volume.source));
        // The source as given: the kernel resolves `..` after symbolic links, not before.
        let resolved = resolve(Path::new(&volume.source));
        if resolved.as_deref().is_some_and(is_engine_socket) {
            return Err(socket_refusal(volume));
        }
        let allowed = |path: &Path| {
            self.volume_prefixes
                .iter()
                .any(|prefix| path.starts_with(prefix))
        };
        if allowed(&normal) && resolved.as_deref().is_none_or(allowed) {
            return Ok(());
        }
        Err(Refusal(format!(
            "`{shown}` mounts a host folder: a worker allows it with \
             `herd worker --allow-volume {}`",
            normal.display()
        )))
    }
}

/// Why a policy refuses a task: a message naming the option and the flag that would allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// A refusal when `volume` mounts the Docker socket or a folder that contains it: whoever
/// holds the socket holds the engine, and with it root on the host. No flag allows it.
pub fn docker_socket_mount(volume: &Volume) -> Option<Refusal> {
    if is_named_volume(&volume.source) {
        return None;
    }
    is_engine_socket(&normalise(Path::new(&volume.source))).then(|| socket_refusal(volume))
}

/// The refusal of `volume` as a mount of an engine's socket.
pub fn socket_refusal(volume: &Volume) -> Refusal {
    Refusal(format!(
        "`{}` would give the task the Docker socket (or another container engine's), and with \
         it root on the host: no worker allows it",
        volume_text(volume)
    ))
}

/// Whether `path` (absolute, normalised) is named like an engine's socket, or is one of the
/// usual sockets or a folder containing one.
fn is_engine_socket(path: &Path) -> bool {
    let named_like_socket = path
        .file_name()
        .is_some_and(|name| SOCKET_NAMES.iter().any(|socket| name == *socket));
    named_like_socket || reaches_docker_socket(path)
}

/// Whether `path` (absolute, normalised) is a Docker socket or a folder containing one.
fn reaches_docker_socket(path: &Path) -> bool {
    path.is_absolute()
        && DOCKER_SOCKETS
            .iter()
            .any(|socket| Path::new(socket).starts_with(path))
}

/// A docker named volume: a name, not a path (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
fn is_named_volume(source: &str) -> bool {
    let mut characters = source.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphanumeric())
        && characters.all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '-')
        })
}

fn volume_text(volume: &Volume) -> String {
    let mode = if volume.read_only { ":ro" } else { "" };
    format!("-v {}:{}{mode}", volume.source, volume.target)
}

/// `path` with `.` and `..` resolved lexically (`..` above `/` stays at `/`).
pub fn normalise(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => normal.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() && !path.is_absolute() {
                    normal.push("..");
                }
            }
            Component::Normal(name) => normal.push(name),
        }
    }
    if normal.as_os_str().is_empty() && path.is_absolute() {
        normal.push("/");
    }
    normal
}

#[cfg(test)]
mod tests;
