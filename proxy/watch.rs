//! Watching the config file and the files it names, so that an edit, an atomic rename or a
//! Kubernetes secret swap reloads flexgate without a signal.
//!
//! Directories are watched, not files: an editor's save-by-rename and the kubelet's `..data`
//! symlink swap replace the file, and a watch on the old inode would never fire again. Any
//! change in a watched directory asks for a reload; the reload compares a digest of the files
//! and does nothing when they did not change, so unrelated files in `/etc` cost one digest.

use std::path::PathBuf;
use std::time::Duration;

use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;
use tracing::warn;

/// Events closer together than this are one change (a save writes, renames and chmods).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches directories for as long as it lives.
pub struct FileWatcher {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher").field("dirs", &self.dirs).finish_non_exhaustive()
    }
}

impl FileWatcher {
    /// Starts watching; every change sends on `changed`. The channel should hold one
    /// message: changes that arrive while a reload is pending are the same reload.
    pub fn new(changed: mpsc::Sender<()>) -> notify_debouncer_full::notify::Result<Self> {
        // The debouncer's thread wakes every tick even when nothing changes; one tick per
        // debounce period (instead of its default of four) keeps an idle proxy idle.
        let debouncer = new_debouncer(DEBOUNCE, Some(DEBOUNCE), move |result: DebounceEventResult| match result {
            Ok(events) if events.is_empty() => {}
            Ok(_) => {
                let _ = changed.try_send(());
            }
            Err(errors) => {
                for e in errors {
                    warn!(error = %e, "watching config files failed");
                }
            }
        })?;
        Ok(Self { debouncer, dirs: Vec::new() })
    }

    /// Watches the directories holding `files`, and stops watching those no longer needed.
    pub fn watch(&mut self, files: &[PathBuf]) {
        let mut dirs: Vec<PathBuf> = files.iter().filter_map(|f| f.parent().map(|d| d.to_path_buf())).collect();
        dirs.sort();
        dirs.dedup();
        for old in self.dirs.iter().filter(|d| !dirs.contains(d)) {
            let _ = self.debouncer.unwatch(old);
        }
        for dir in dirs.iter().filter(|d| !self.dirs.contains(d)) {
            // An empty parent is the current directory.
            let target = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir.clone() };
            if let Err(e) = self.debouncer.watch(&target, RecursiveMode::NonRecursive) {
                warn!(directory = %target.display(), error = %e, "cannot watch for config changes; SIGHUP still reloads");
            }
        }
        self.dirs = dirs;
    }
}
