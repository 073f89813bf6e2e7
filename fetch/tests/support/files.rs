//! Local files for every test binary: `tests/support/mod.rs` and `tests/it/support.rs` both
//! include this file (the `Backend` contract needs `write` and `tree` from either).

use std::fs;
use std::path::Path;

/// Writes `content` to `path`, creating its directory.
pub fn write(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// Every path under `root` (files, directories and links, which are not followed), relative,
/// sorted; directories end with `/`.
pub fn tree(root: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    collect(root, root, &mut paths);
    paths.sort();
    paths
}

fn collect(root: &Path, directory: &Path, paths: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(directory) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if entry.file_type().unwrap().is_dir() {
            paths.push(format!("{relative}/"));
            collect(root, &path, paths);
        } else {
            paths.push(relative);
        }
    }
}
