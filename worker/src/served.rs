//! What a worker serves: its own handler (a built-in, `--exec`, or a library user's), or a
//! hosted Lambda runtime (`--runtime`), behind the one [`Handler`] the session drives.

use std::sync::Arc;

use crate::handler::{BrokenFuture, Handler, HandlerFuture, PrepareFuture, Running, Task};
use crate::runtime::RuntimeHost;

/// The handler a worker runs: its own, or a hosted Lambda runtime (`--runtime`).
pub(crate) enum Served<H> {
    Own(H),
    Runtime(Arc<RuntimeHost>),
}

impl<H: Handler> Handler for Served<H> {
    fn call(&self, task: Task) -> HandlerFuture {
        match self {
            Served::Own(h) => h.call(task),
            Served::Runtime(r) => r.call(task),
        }
    }

    fn prepare(&self) -> PrepareFuture {
        match self {
            Served::Own(h) => h.prepare(),
            Served::Runtime(r) => r.prepare(),
        }
    }

    fn limit(&self, slots: u32) {
        match self {
            Served::Own(h) => h.limit(slots),
            Served::Runtime(r) => r.limit(slots),
        }
    }

    fn broken(&self) -> BrokenFuture {
        match self {
            Served::Own(h) => h.broken(),
            Served::Runtime(r) => r.broken(),
        }
    }

    fn running(&self) -> Option<Running> {
        match self {
            Served::Own(h) => h.running(),
            Served::Runtime(r) => r.running(),
        }
    }
}
