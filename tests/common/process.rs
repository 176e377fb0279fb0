//! Running the `migrate` binary: to completion, or in the background to be killed or
//! interrupted mid-run.

use super::assert::text;
use super::server::TestDb;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

/// `migrate ARGS` to completion, off the async workers.
pub async fn migrate(t: &TestDb, args: &[&str]) -> Output {
    let mut cmd = t.migrate_cmd(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("run migrate"))
        .await
        .unwrap()
}

/// A `migrate` process in the background; killed if the test fails first.
pub struct Running {
    child: Option<Child>,
}

/// Starts `migrate ARGS` in the background, its output captured.
pub fn spawn(t: &TestDb, args: &[&str]) -> Running {
    Running::start(t, args)
}

impl Running {
    /// Starts `migrate ARGS` in the background, its output captured.
    pub fn start(t: &TestDb, args: &[&str]) -> Running {
        let child = t
            .migrate_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start migrate");
        Running { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_some()
    }

    /// Waits for the exit and collects the output.
    pub async fn output(mut self) -> Output {
        let child = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap()
    }

    /// SIGKILL (what `Child::kill` sends on unix), then reaps it, so its pid is gone.
    pub async fn kill(mut self) -> Output {
        self.child.as_mut().unwrap().kill().unwrap();
        self.output().await
    }

    /// Ctrl-C.
    pub fn interrupt(&self) {
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGINT) };
        assert_eq!(rc, 0, "sending SIGINT");
    }

    /// Polls `ready` every 10 ms until it holds; fails if the process ends first.
    pub async fn wait_until(&mut self, what: &str, mut ready: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if ready().await {
                return;
            }
            if self.has_exited() {
                let child = self.child.take().unwrap();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "migrate ended ({}) before {what}:\n{}",
                    out.status,
                    text(&out)
                );
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls `ready` every 10 ms until it holds; false if the process ended first.
    pub async fn wait_for(&mut self, mut ready: impl AsyncFnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if ready().await {
                return true;
            }
            if self.has_exited() {
                return false;
            }
            assert!(Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
