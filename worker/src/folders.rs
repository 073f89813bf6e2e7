//! [`Folders`]: the attempts' folders (`WORK/tasks/TASK-ATTEMPT/{input,output,resource,tmp}`),
//! reused from one attempt to the next.
//!
//! Creating five folders and deleting them again for every attempt costs more than a short
//! task itself: on ext4, inode allocation after many deletions (`find_inode_bit`,
//! `recently_deleted`) took over half the worker's CPU in the dispatch benchmark. So a
//! succeeded attempt's folder is emptied (whatever the task wrote goes) and parked under
//! `WORK/tasks/.spare/`; the next attempt renames a spare folder into place instead of creating
//! one. A renamed directory keeps its inode and its sub-folders: no allocation at all.
//!
//! A failed or canceled attempt keeps its folder under its own name for inspection (its
//! `/output` and `/tmp`; the copies of inputs and resources go) until it is older than
//! `--keep-failed` ([`Folders::sweep_failed`], see [`crate::cleaning`]). Spare folders left by
//! an earlier run of the worker are reused.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use herd_proto::TaskId;
use tracing::warn;

use crate::executor::TaskDirs;

/// The sub-folders of an attempt's folder.
const SUB_FOLDERS: [&str; 4] = ["input", "output", "resource", "tmp"];

/// Where spare folders wait, under `WORK/tasks`.
const SPARE: &str = ".spare";

/// Attempt folders and the spare ones ready for reuse.
#[derive(Debug)]
pub(crate) struct Folders {
    tasks: PathBuf,
    spare: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    /// Spare folders kept at most; more are deleted.
    keep: usize,
    next_name: AtomicU64,
    /// Whether `spare` is known to exist.
    spare_made: AtomicBool,
    /// The folders of attempts under way (from [`Folders::dirs`] to their release): never
    /// swept.
    in_use: Mutex<HashSet<PathBuf>>,
    /// Failed attempts' folders a sweep could not remove: warned about once, not tried again.
    unremovable: Mutex<HashSet<PathBuf>>,
}

impl Folders {
    /// The folders under `work_dir`, keeping up to `keep` spare ones (the attempts a worker may
    /// hold at once is the natural number).
    pub(crate) fn new(work_dir: &Path, keep: usize) -> Folders {
        let tasks = work_dir.join("tasks");
        let spare = tasks.join(SPARE);
        let free: Vec<PathBuf> = fs::read_dir(&spare)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .collect()
            })
            .unwrap_or_default();
        // New spare names start above every name already there.
        let next_name = free
            .iter()
            .filter_map(|path| path.file_name()?.to_str()?.parse::<u64>().ok())
            .max()
            .map_or(0, |highest| highest + 1);
        Folders {
            tasks,
            spare,
            free: Mutex::new(free),
            keep,
            next_name: AtomicU64::new(next_name),
            spare_made: AtomicBool::new(false),
            in_use: Mutex::new(HashSet::new()),
            unremovable: Mutex::new(HashSet::new()),
        }
    }

    fn in_use(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        self.in_use
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes the folders of failed attempts older than `keep_failed` (`--keep-failed`);
    /// see [`crate::cleaning::sweep_failed`]. Blocking.
    pub(crate) fn sweep_failed(&self, keep_failed: Duration) -> Vec<PathBuf> {
        let in_use = self.in_use().clone();
        let mut unremovable = self
            .unremovable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        crate::cleaning::sweep_failed(
            &self.tasks,
            keep_failed,
            &in_use,
            &mut unremovable,
            crate::cleaning::remove_tree,
        )
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The folders of attempt `attempt` of `task_id` of the server's database `instance` (0:
    /// a server that does not say), by name (nothing is created), in use until
    /// [`Folders::release`]d. The instance is in the name so that a reset database's task 1
    /// never meets an older one's folder.
    pub(crate) fn dirs(&self, instance: u64, task_id: TaskId, attempt: u32) -> TaskDirs {
        let root = self
            .tasks
            .join(attempt_folder_name(instance, task_id, attempt));
        self.in_use().insert(root.clone());
        TaskDirs {
            input: root.join("input"),
            output: root.join("output"),
            resource: root.join("resource"),
            tmp: root.join("tmp"),
            root,
        }
    }

    /// Makes `dirs` exist by renaming a spare folder into place: one `rename`, cheap enough
    /// to run on the async threads. False when there is no spare folder (or it could not be
    /// used): [`Folders::create`] must make them.
    pub(crate) fn reuse_spare(&self, dirs: &TaskDirs) -> bool {
        let Some(spare) = self.free().pop() else {
            return false;
        };
        match fs::rename(&spare, &dirs.root) {
            Ok(()) => true,
            // Taken by something else (an attempt folder left by an earlier run, say): drop the
            // spare; new folders will be made.
            Err(error) => {
                warn!(spare = %spare.display(), %error, "cannot reuse a spare attempt folder");
                let _ = fs::remove_dir_all(&spare);
                false
            }
        }
    }

    /// Makes `dirs` exist, empty and private to the worker (0700): new folders, when no spare
    /// one could be reused. [`Folders::give`] hands them to the task's user.
    pub(crate) fn create(&self, dirs: &TaskDirs) -> io::Result<()> {
        for dir in all(dirs) {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// Gives the attempt's folders mode 0700 and their owner: the task's `-u`/`-g` when given
    /// (so that it can write `/output`), else the worker (the owner of `WORK/tasks`), whoever
    /// had a reused folder before. Links are never followed (`lchown`; the folders were made
    /// or emptied as real folders by [`Folders::create`] or the reuse).
    pub(crate) fn give(
        &self,
        dirs: &TaskDirs,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> io::Result<()> {
        let worker = fs::metadata(&self.tasks)?;
        let owner = (uid.unwrap_or(worker.uid()), gid.unwrap_or(worker.gid()));
        for dir in all(dirs) {
            if !fs::symlink_metadata(dir)?.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is not a folder",
                    dir.display()
                )));
            }
            std::os::unix::fs::lchown(dir, Some(owner.0), Some(owner.1))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// Makes `dirs` exist, empty and private to the worker: a spare folder renamed into place,
    /// or new folders.
    #[cfg(test)]
    pub(crate) fn prepare(&self, dirs: &TaskDirs) -> io::Result<()> {
        if self.reuse_spare(dirs) {
            return Ok(());
        }
        self.create(dirs)
    }

    /// After the attempt: a succeeded one's folder is emptied and kept as a spare (or deleted
    /// when enough are kept); a failed one's loses its inputs and resources only.
    pub(crate) fn release(&self, dirs: &TaskDirs, succeeded: bool) {
        self.in_use().remove(&dirs.root);
        if !succeeded {
            for target in [&dirs.input, &dirs.resource] {
                remove_all(target);
            }
            return;
        }
        if self.free().len() >= self.keep || empty_for_reuse(&dirs.root).is_err() {
            remove_all(&dirs.root);
            return;
        }
        let name = self.next_name.fetch_add(1, Ordering::Relaxed);
        let spare = self.spare.join(name.to_string());
        let parked = match self.spare_made.load(Ordering::Relaxed) {
            true => fs::rename(&dirs.root, &spare),
            false => fs::create_dir_all(&self.spare).and_then(|()| fs::rename(&dirs.root, &spare)),
        };
        match parked {
            Ok(()) => {
                self.spare_made.store(true, Ordering::Relaxed);
                self.free().push(spare);
            }
            Err(error) => {
                // Made again next time, should something have removed it.
                self.spare_made.store(false, Ordering::Relaxed);
                warn!(path = %dirs.root.display(), %error, "cannot keep an attempt folder for reuse");
                remove_all(&dirs.root);
            }
        }
    }
}

/// Releases attempts' folders ([`Folders::release`]) on a thread of its own, in order, so an
/// attempt's end costs its runner one channel send: no thread of the blocking pool woken per
/// attempt, and, under a flow of short tasks, one thread that goes from one folder to the next
/// without sleeping. The thread ends when the janitor is dropped, after the folders sent.
#[derive(Debug)]
pub(crate) struct Janitor {
    folders: Arc<Folders>,
    sender: Option<mpsc::Sender<(TaskDirs, bool)>>,
}

impl Janitor {
    /// Starts the thread; without one (the system refused it), folders are released inline.
    pub(crate) fn start(folders: Arc<Folders>) -> Janitor {
        let (sender, receiver) = mpsc::channel::<(TaskDirs, bool)>();
        let releasing = folders.clone();
        let started = std::thread::Builder::new()
            .name("herd-folders".to_owned())
            .spawn(move || {
                for (dirs, succeeded) in receiver {
                    releasing.release(&dirs, succeeded);
                }
            });
        let sender = match started {
            Ok(_) => Some(sender),
            Err(error) => {
                warn!(%error, "cannot start the thread that cleans attempt folders; cleaning inline");
                None
            }
        };
        Janitor { folders, sender }
    }

    /// Releases `dirs` soon (see [`Folders::release`]).
    pub(crate) fn release(&self, dirs: TaskDirs, succeeded: bool) {
        let unsent = match &self.sender {
            Some(sender) => sender.send((dirs, succeeded)).err().map(|error| error.0),
            None => Some((dirs, succeeded)),
        };
        if let Some((dirs, succeeded)) = unsent {
            self.folders.release(&dirs, succeeded);
        }
    }
}

/// The attempt's folder and its four sub-folders.
fn all(dirs: &TaskDirs) -> [&PathBuf; 5] {
    [
        &dirs.root,
        &dirs.input,
        &dirs.output,
        &dirs.resource,
        &dirs.tmp,
    ]
}

/// Leaves `root` with its four sub-folders, empty and private to the worker, and nothing else.
fn empty_for_reuse(root: &Path) -> io::Result<()> {
    let mut present = [false; SUB_FOLDERS.len()];
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let sub = SUB_FOLDERS.iter().position(|sub| name == *sub);
        match sub {
            Some(index) if entry.file_type()?.is_dir() => {
                empty(&entry.path())?;
                present[index] = true;
            }
            _ => remove_entry(&entry.path(), entry.file_type()?.is_dir())?,
        }
    }
    for (sub, present) in SUB_FOLDERS.iter().zip(present) {
        let dir = root.join(sub);
        if !present {
            fs::create_dir(&dir)?;
        }
        // A task may have changed the mode of its folders.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))
}

/// Removes what `dir` holds, keeping `dir`.
fn empty(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        remove_entry(&entry.path(), entry.file_type()?.is_dir())?;
    }
    Ok(())
}

fn remove_entry(path: &Path, is_dir: bool) -> io::Result<()> {
    // A read-only folder inside (chmod by the task) would stop the removal of its content.
    if is_dir {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

fn remove_all(path: &Path) {
    if let Err(error) = fs::remove_dir_all(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        warn!(
            path = %path.display(),
            %error,
            "cannot clean up an attempt's folder (files written as root by a Docker container, \
             while the worker is not root?); it is left, and removed past --keep-failed if it can be"
        );
    }
}

/// `i<instance, 16 hex digits>-<task>-<attempt>`, or `<task>-<attempt>` for instance 0.
pub(crate) fn attempt_folder_name(instance: u64, task_id: TaskId, attempt: u32) -> String {
    if instance == 0 {
        format!("{task_id}-{attempt}")
    } else {
        format!("i{instance:016x}-{task_id}-{attempt}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) -> Vec<String> {
        let mut paths = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                paths.push(path.strip_prefix(root).unwrap().display().to_string());
                if path.is_dir() {
                    stack.push(path);
                }
            }
        }
        paths.sort();
        paths
    }

    #[test]
    fn folders_are_given_to_the_task_s_user_and_back_to_the_worker_on_reuse() {
        let work = tempfile::tempdir().unwrap();
        let folders = Folders::new(work.path(), 2);
        let owner = |path: &Path| {
            let metadata = fs::symlink_metadata(path).unwrap();
            (metadata.uid(), metadata.gid(), metadata.mode() & 0o777)
        };
        let first = folders.dirs(0, TaskId(1), 1);
        folders.prepare(&first).unwrap();
        folders.give(&first, Some(65534), Some(65533)).unwrap();
        for dir in all(&first) {
            assert_eq!(owner(dir), (65534, 65533, 0o700), "{}", dir.display());
        }
        // The task makes its output world-writable and swaps /tmp for a link.
        fs::set_permissions(&first.output, fs::Permissions::from_mode(0o777)).unwrap();
        fs::remove_dir(&first.tmp).unwrap();
        std::os::unix::fs::symlink("/", &first.tmp).unwrap();
        folders.release(&first, true);

        let second = folders.dirs(0, TaskId(2), 1);
        folders.prepare(&second).unwrap();
        folders.give(&second, None, None).unwrap();
        let worker = fs::metadata(work.path().join("tasks")).unwrap();
        for dir in all(&second) {
            assert_eq!(
                owner(dir),
                (worker.uid(), worker.gid(), 0o700),
                "{}",
                dir.display()
            );
        }
    }

    #[test]
    fn a_succeeded_folder_is_emptied_and_reused_a_failed_one_is_kept() {
        let work = tempfile::tempdir().unwrap();
        let folders = Folders::new(work.path(), 2);
        let first = folders.dirs(0, TaskId(1), 1);
        folders.prepare(&first).unwrap();
        let mode = fs::metadata(&first.output).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::write(first.output.join("result.txt"), "x").unwrap();
        fs::create_dir_all(first.tmp.join("deep/er")).unwrap();
        fs::write(first.root.join("in-cwd.txt"), "x").unwrap();
        let inode = |path: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).unwrap());
        let first_inode = inode(&first.root);
        folders.release(&first, true);
        assert!(!first.root.exists());

        // The next attempt gets the same folder, empty, under its own name.
        let second = folders.dirs(0, TaskId(2), 1);
        folders.prepare(&second).unwrap();
        assert_eq!(inode(&second.root), first_inode);
        assert_eq!(
            tree(&second.root),
            vec!["input", "output", "resource", "tmp"]
        );

        // A failed attempt keeps /output and /tmp, loses inputs and resources, and is not reused.
        fs::write(second.output.join("partial.txt"), "x").unwrap();
        fs::write(second.input.join("reads.fq"), "x").unwrap();
        folders.release(&second, false);
        assert_eq!(
            tree(&second.root),
            vec!["output", "output/partial.txt", "tmp"]
        );
        let third = folders.dirs(0, TaskId(3), 1);
        folders.prepare(&third).unwrap();
        assert_ne!(inode(&third.root), first_inode);
        assert_eq!(
            tree(&third.root),
            vec!["input", "output", "resource", "tmp"]
        );
    }

    #[test]
    fn spare_folders_are_capped_and_survive_a_restart() {
        let work = tempfile::tempdir().unwrap();
        let folders = Folders::new(work.path(), 1);
        let (a, b) = (folders.dirs(0, TaskId(1), 1), folders.dirs(0, TaskId(2), 1));
        folders.prepare(&a).unwrap();
        folders.prepare(&b).unwrap();
        folders.release(&a, true);
        folders.release(&b, true);
        let spares = fs::read_dir(work.path().join("tasks/.spare"))
            .unwrap()
            .count();
        assert_eq!(spares, 1, "one spare kept, the other deleted");
        assert!(!b.root.exists());

        // A new worker on the same folder reuses the spare.
        let restarted = Folders::new(work.path(), 1);
        let c = restarted.dirs(0, TaskId(3), 1);
        restarted.prepare(&c).unwrap();
        let spares = fs::read_dir(work.path().join("tasks/.spare"))
            .unwrap()
            .count();
        assert_eq!(spares, 0);
        assert_eq!(tree(&c.root), vec!["input", "output", "resource", "tmp"]);
    }

    #[test]
    fn folder_names_carry_the_database_and_the_sweeper_knows_them() {
        let name = attempt_folder_name(0xabc, TaskId(1), 2);
        assert_eq!(name, "i0000000000000abc-1-2");
        assert_eq!(attempt_folder_name(0, TaskId(1), 2), "1-2");
        assert!(crate::cleaning::is_attempt_name(&name));
        assert!(crate::cleaning::is_attempt_name("1-2"));
        assert!(!crate::cleaning::is_attempt_name("ixyz-1-2"));
        assert!(!crate::cleaning::is_attempt_name(".spare"));
        let directory = tempfile::tempdir().unwrap();
        let folders = Folders::new(directory.path(), 1);
        assert_ne!(
            folders.dirs(1, TaskId(1), 1).root,
            folders.dirs(2, TaskId(1), 1).root,
            "task 1 of two databases never shares a folder"
        );
    }
}
