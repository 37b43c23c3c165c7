//! Transfers of several blobs at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Run `job(i)` for every `i` in `0..n` on up to `workers` threads, taking jobs in order. The first
/// failure raises `stop` (running jobs may watch it to give up early), no further job starts, and that
/// failure is the result; otherwise the results, by index.
pub(super) fn run_all<T: Send>(n: usize, workers: usize, stop: &AtomicBool, job: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n || stop.load(Ordering::Relaxed) {
                    return;
                }
                match job(i) {
                    Ok(r) => results.lock().unwrap()[i] = Some(r),
                    Err(e) => {
                        failure.lock().unwrap().get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results.into_inner().unwrap().into_iter().map(|r| r.expect("every job ran")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_by_index_and_first_failure_stops() {
        let stop = AtomicBool::new(false);
        assert_eq!(run_all(5, 3, &stop, |i| Ok(i * 10)).unwrap(), vec![0, 10, 20, 30, 40]);
        let ran = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let r = run_all(100, 1, &stop, |i| {
            ran.fetch_add(1, Ordering::SeqCst);
            if i == 3 { Err(Error::Invalid("job 3".into())) } else { Ok(i) }
        });
        assert!(matches!(r, Err(Error::Invalid(m)) if m == "job 3"));
        assert_eq!(ran.load(Ordering::SeqCst), 4);
        assert!(stop.load(Ordering::SeqCst));
        assert!(run_all(0, 4, &AtomicBool::new(false), |_| Ok(())).unwrap().is_empty());
    }
}
