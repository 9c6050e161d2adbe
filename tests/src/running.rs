//! [`Running`]: one service's `run_until_stopped` future spawned in this
//! process, the handle every `*_support` type holds.

use std::future::Future;

use anyhow::Result;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A spawned `Application::run_until_stopped`. [`Self::stop`] is the
/// graceful stop; dropping the handle starts the same shutdown without
/// waiting for it; [`Self::kill`] aborts the task, as a crash would.
#[derive(Debug)]
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl Running {
    /// Spawns `run(shutdown)`, where `shutdown` resolves on stop or drop.
    pub fn spawn<Run, Fut>(run: Run) -> Self
    where
        Run: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.await;
        })));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful stop: the service finishes what it does and returns.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await??;
        }
        Ok(())
    }

    /// A crash: the task is aborted, so every future of the service is
    /// dropped wherever it is (requests in flight, an open transaction,
    /// uncommitted offsets).
    pub async fn kill(mut self) {
        self.stop.take();
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
