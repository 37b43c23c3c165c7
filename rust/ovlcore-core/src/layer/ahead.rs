//! A walk's tar entries made ahead on a helper thread, small files' content already read into memory
//! (up to a byte budget), so that the system calls of many small files overlap with the hashing of a
//! big one instead of following it. A commit's tar is hashed as fast as sha256 goes; without this,
//! its small files leave the hashing thread waiting for their open/read/close.

use std::io::Read;
use std::sync::{mpsc, Arc, Condvar, Mutex};

use crate::error::{Error, Result};
use crate::layer::export::{Item, Walker};
use crate::sys;
use crate::tar::padding;

/// Files up to this size are read ahead; bigger ones are read by the consumer, as without read-ahead.
const INLINE_MAX: u64 = 64 << 10;

/// Bytes of entries made but not yet taken, at most (one entry more when nothing is waiting).
const BUDGET: usize = 32 << 20;

/// What an entry whose file is left open counts against the budget (bounds the open files in flight).
const OPEN_FILE_COST: usize = 256 << 10;

pub(super) struct Ahead {
    /// `Ok(None)` marks the end of the walk: a channel closed without it means the helper died.
    items: mpsc::Receiver<Result<Option<Item>>>,
    budget: Arc<Budget>,
}

impl Ahead {
    pub(super) fn start(walker: Box<Walker>) -> Result<Ahead> {
        let (tx, items) = mpsc::channel();
        let budget = Arc::new(Budget { state: Mutex::new((0, false)), freed: Condvar::new() });
        let helper_budget = budget.clone();
        std::thread::Builder::new()
            .name("ovlcore-tar-ahead".into())
            .spawn(move || make_ahead(*walker, &tx, &helper_budget))
            .map_err(Error::from)?;
        Ok(Ahead { items, budget })
    }

    pub(super) fn next_item(&mut self) -> Result<Option<Item>> {
        match self.items.recv() {
            Ok(Ok(Some(item))) => {
                self.budget.release(cost(&item));
                Ok(Some(item))
            }
            Ok(Ok(None)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::corrupt("the thread walking the layer ended before the walk did")),
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // A stream dropped before its end: the helper stops at its next entry.
        self.budget.close();
    }
}

fn make_ahead(mut walker: Walker, tx: &mpsc::Sender<Result<Option<Item>>>, budget: &Budget) {
    // Reading ahead uses idle CPU: the stream's own reading must never wait for it.
    sys::yield_cpu_to_siblings(5);
    loop {
        let item = walker.next_item().and_then(|i| i.map(read_small_body).transpose());
        let more = matches!(item, Ok(Some(_)));
        if let Ok(Some(i)) = &item {
            if !budget.take(cost(i)) {
                return;
            }
        }
        if tx.send(item).is_err() || !more {
            return;
        }
    }
}

fn cost(item: &Item) -> usize {
    item.header.len() + if item.body.is_some() { OPEN_FILE_COST } else { 0 }
}

/// A small file's content (and its padding) appended to the entry's header bytes.
fn read_small_body(mut item: Item) -> Result<Item> {
    match item.body.take() {
        Some((file, size)) if size <= INLINE_MAX => {
            let start = item.header.len();
            item.header.reserve(size as usize + padding(size));
            file.take(size).read_to_end(&mut item.header)?;
            if ((item.header.len() - start) as u64) < size {
                return Err(Error::corrupt("a layer file shrank while being read"));
            }
            item.header.resize(item.header.len() + padding(size), 0);
        }
        body => item.body = body,
    }
    Ok(item)
}

/// Bytes in flight, and whether the consumer is gone.
struct Budget {
    state: Mutex<(usize, bool)>,
    freed: Condvar,
}

impl Budget {
    /// Wait until `n` more bytes fit; false when the consumer is gone.
    fn take(&self, n: usize) -> bool {
        let mut s = self.state.lock().unwrap();
        while s.0 > 0 && s.0 + n > BUDGET && !s.1 {
            s = self.freed.wait(s).unwrap();
        }
        s.0 += n;
        !s.1
    }

    fn release(&self, n: usize) {
        self.state.lock().unwrap().0 -= n;
        self.freed.notify_one();
    }

    fn close(&self) {
        self.state.lock().unwrap().1 = true;
        self.freed.notify_one();
    }
}
