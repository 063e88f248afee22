//! Ctrl-C, the same for every long command: the first SIGINT sets a flag that the command checks
//! after every step (it then saves what it has and stops with exit code 130) and says at once, on
//! stderr, that it is stopping; a second one ends the process at once (exit code 130), first
//! removing the output directory the command registered if it is still empty.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// An output directory created for the command, removed by a second Ctrl-C when still empty.
static FRESH_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// What the first Ctrl-C prints.
pub const STOPPING: &str = "ember-train: Ctrl-C: stopping after the current step and saving what \
                            there is (press Ctrl-C again to quit at once without saving)";

/// Installs the handler (once per process; `main` calls it).
pub fn install() -> Result<(), String> {
    // ctrlc runs the handler on its own thread, so printing and file calls are allowed here.
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // Second Ctrl-C: the user does not want to wait for the checkpoint.
            if let Some(d) = FRESH_DIR.lock().ok().and_then(|g| g.clone()) {
                let _ = std::fs::remove_dir(d); // fails unless empty: nothing saved is lost
            }
            std::process::exit(130);
        }
        eprintln!("\n{STOPPING}");
    })
    .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Registers `dir` (just created by the command) for removal by a second Ctrl-C while empty.
pub fn fresh_dir(dir: PathBuf) {
    if let Ok(mut g) = FRESH_DIR.lock() {
        *g = Some(dir);
    }
}
