//! Directory read-ahead for walks of the tree (`find`, `tar`, `os.walk`): once a directory is listed, its
//! subdirectories are usually listed next, in name order. A background thread reads them from the image
//! layers (names and metadata; layers are immutable, so nothing it caches goes stale) while the walker
//! is still busy with what it got, and the walker's next listing is then served from the cache.
//!
//! Work is a stack: the most recently listed directory's subdirectories are read first, which follows
//! a depth-first walk; old work beyond a bound is dropped (it is only a hint).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::lower::{Lower, Node};

/// At most this many directories wait to be read ahead.
const QUEUED_MAX: usize = 4096;

enum Task {
    /// A directory was listed: queue its subdirectories.
    Listed(Arc<Node>),
    /// Read this directory ahead.
    Read(Arc<Node>),
}

#[derive(Default)]
struct Queue {
    tasks: Vec<Task>,
    stop: bool,
}

struct Shared {
    lower: Arc<Lower>,
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The read-ahead thread of one stack; stopped when dropped. (More threads were measured: the image
/// layers' disk gives little more to parallel readers.)
pub struct ReadAhead {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ReadAhead {
    pub fn start(lower: Arc<Lower>) -> std::io::Result<ReadAhead> {
        let shared = Arc::new(Shared { lower, queue: Mutex::new(Queue::default()), wake: Condvar::new() });
        let worker = shared.clone();
        let thread = std::thread::Builder::new().name("ovlcore-readahead".into()).spawn(move || worker.run())?;
        Ok(ReadAhead { shared, thread: Some(thread) })
    }

    /// `node` is being listed: read its subdirectories ahead.
    pub fn listed(&self, node: &Arc<Node>) {
        self.push(Task::Listed(node.clone()));
    }

    fn push(&self, task: Task) {
        self.shared.queue.lock().unwrap().add([task]);
        self.shared.wake.notify_one();
    }
}

impl Queue {
    /// Tasks go on top; the oldest beyond the bound are dropped (they are only hints).
    fn add(&mut self, tasks: impl IntoIterator<Item = Task>) {
        self.tasks.extend(tasks);
        let excess = self.tasks.len().saturating_sub(QUEUED_MAX);
        self.tasks.drain(..excess);
    }
}

impl Shared {
    fn run(&self) {
        loop {
            let task = {
                let mut q = self.queue.lock().unwrap();
                loop {
                    if q.stop {
                        return;
                    }
                    if let Some(t) = q.tasks.pop() {
                        break t;
                    }
                    q = self.wake.wait(q).unwrap();
                }
            };
            // Errors are left for the walker's own request to meet and report.
            match task {
                Task::Listed(node) => self.queue_subdirs(&node),
                Task::Read(node) => {
                    let _ = self.lower.read_ahead(&node);
                }
            }
        }
    }

    /// Queue the subdirectories of `node` to be read, the first one on top.
    fn queue_subdirs(&self, node: &Node) {
        if let Ok(subdirs) = self.lower.subdirs(node) {
            self.queue.lock().unwrap().add(subdirs.into_iter().rev().map(Task::Read));
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
