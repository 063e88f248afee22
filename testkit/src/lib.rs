//! Test support shared by the integration tests of `emberlm-trainer` and `emberlm-tests`:
//! scratch directories that are removed even when a test panics, and spawned children that are
//! killed when a test panics before waiting for them. Not part of any shipped crate.

use std::path::Path;
use std::process::{Child, Output};

/// A test's scratch directory: removed with everything in it when dropped, so also when the
/// test fails or panics. Derefs to the directory's path. Keep it alive until every child process
/// writing into it has exited (see [`KillOnDrop`]).
#[derive(Debug)]
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// A fresh, uniquely named directory `<prefix>*` in the temp directory.
///
/// # Panics
/// If the directory cannot be created (a test setup failure).
pub fn scratch(prefix: &str) -> Scratch {
    Scratch(
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("creating a scratch directory in the temp directory"),
    )
}

/// A spawned child that is killed and reaped when dropped, so a test that panics before waiting
/// for it does not leave it running (and writing into a removed scratch directory). Declare it
/// after the [`Scratch`] it writes into: locals drop in reverse order, the child first.
#[derive(Debug)]
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        KillOnDrop(Some(child))
    }

    /// [`Child::wait_with_output`]: waits for the child to exit; the guard is then disarmed.
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        self.0
            .take()
            .expect("child present until waited for")
            .wait_with_output()
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("child present until waited for")
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until waited for")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
