//! Pulling layers: each blob streamed from the socket through sha256 verification and decompression
//! into the layer importer, in one pass and bounded memory, several layers at once. A connection lost
//! mid-blob resumes with `Range`; the compressed bytes can be kept in a partial-download file so that
//! the next pull, after the process died, resumes from them too.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use ureq::BodyReader;

use super::parallel::run_all;
use super::transport::{header, status_error, Payload};
use super::{scope, Client, Descriptor, Reference, TransferEvent, TransferProgress};
use crate::attrs::Privilege;
use crate::digest::Hasher;
use crate::error::{Error, Result};
use crate::layer::{import_layer, ImportOptions, ImportReport};
use crate::union::Lower;

/// One layer to pull: its blob, the empty staging directory it goes to, where its tar-split records go,
/// the layers below it (top first; they may include the directories of earlier jobs of the same pull),
/// and the file that keeps the compressed bytes for a resume after the process dies.
#[derive(Clone, Debug)]
pub struct LayerPull {
    pub desc: Descriptor,
    pub dest: PathBuf,
    pub split: Option<PathBuf>,
    pub lower: Vec<PathBuf>,
    pub partial: Option<PathBuf>,
}

/// A blob's bytes from `offset` on, reconnecting with `Range` when the connection breaks.
struct BlobStream<'a> {
    client: &'a Client,
    r: &'a Reference,
    url: String,
    digest: String,
    size: u64,
    body: Option<BodyReader<'static>>,
    offset: u64,
    failures: u32,
}

impl<'a> BlobStream<'a> {
    /// Open the blob at `from`; returns where it really starts (0 when the server ignores `Range`).
    fn open(&mut self, from: u64) -> Result<u64> {
        if from >= self.size && from > 0 {
            self.offset = from;
            self.body = None;
            return Ok(from);
        }
        let mut hs = Vec::new();
        if from > 0 {
            hs.push(("Range".to_string(), format!("bytes={from}-")));
        }
        let scopes = [scope(&self.r.repository, "pull")];
        let (resp, _) = self.client.send(&self.r.registry, &scopes, "GET", &self.url, &hs, Payload::Empty)?;
        let status = resp.status().as_u16();
        let start = match status {
            200 => 0,
            206 => {
                let cr = header(&resp, "content-range").unwrap_or_default();
                let start = cr.trim_start_matches("bytes ").split('-').next().and_then(|s| s.trim().parse::<u64>().ok());
                if start != Some(from) {
                    return Err(Error::Registry { status: Some(206), code: None, message: format!("blob {}: the registry resumed at {cr:?}, not at byte {from}", self.digest) });
                }
                from
            }
            404 => {
                return Err(Error::NotFound(format!("{}: blob {} unknown to the registry", self.r.name(), self.digest)));
            }
            _ => return Err(status_error(resp, &format!("fetching blob {} of {}", self.digest, self.r.name()))),
        };
        self.body = Some(resp.into_body().into_with_config().limit(u64::MAX).reader());
        self.offset = start;
        Ok(start)
    }

    fn reconnect(&mut self, why: io::Error) -> io::Result<()> {
        self.body = None;
        loop {
            self.failures += 1;
            if self.failures > self.client.config().retries {
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(self.client.config().backoff_ms.saturating_mul(1 << self.failures.min(8))));
            let at = self.offset;
            match self.open(at) {
                Ok(start) if start == at => return Ok(()),
                // Bytes already handed on cannot be taken back: the caller starts over.
                Ok(_) => return Err(io::Error::other(Error::Registry { status: Some(200), code: None, message: format!("blob {}: the registry cannot resume a broken download", self.digest) })),
                Err(Error::Registry { status: None, .. }) => continue,
                // The registry will not serve the rest: what broke is the error to report.
                Err(_) => return Err(why),
            }
        }
    }
}

impl Read for BlobStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.offset >= self.size && self.body.is_none() {
                return Ok(0);
            }
            let Some(body) = self.body.as_mut() else {
                self.reconnect(io::Error::other("not connected"))?;
                continue;
            };
            match body.read(buf) {
                Ok(0) if self.offset < self.size => {
                    let cut = Error::truncated(format!("blob {}", self.digest), self.size, self.offset);
                    self.reconnect(io::Error::other(cut))?;
                }
                Ok(0) => {
                    self.body = None;
                    return Ok(0);
                }
                Ok(n) => {
                    self.offset += n as u64;
                    if self.offset > self.size {
                        return Err(io::Error::other(Error::archive(format!("blob {} is longer than its {} bytes", self.digest, self.size))));
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.reconnect(e)?,
            }
        }
    }
}

/// Bytes read, also appended to the partial-download file and/or hashed.
struct Tee<R> {
    inner: R,
    file: Option<File>,
    hasher: Option<Hasher>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(f) = self.file.as_mut() {
            // A full disk must not fail the pull: the file only serves a later resume.
            if f.write_all(&buf[..n]).is_err() {
                self.file = None;
            }
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Which jobs are complete, so that a layer reads the layers below it (to drop whiteouts that hide
/// nothing) only once they are.
struct Completion {
    done: Mutex<Vec<bool>>,
    changed: Condvar,
}

impl Completion {
    fn mark(&self, i: usize) {
        self.done.lock().unwrap()[i] = true;
        self.changed.notify_all();
    }

    /// Wait until every job before `i` is complete (an error once the pull is stopping).
    fn wait_below(&self, i: usize, stop: &AtomicBool) -> Result<()> {
        let mut done = self.done.lock().unwrap();
        loop {
            if done[..i].iter().all(|d| *d) {
                return Ok(());
            }
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Invalid("cancelled: another layer failed".into()));
            }
            done = self.changed.wait_timeout(done, Duration::from_millis(100)).unwrap().0;
        }
    }
}

/// Blocks at the end of the input until the layers below are complete: the importer reads them only
/// after the input has ended, so layers download and extract in parallel and still see a complete
/// stack when they finish.
struct WaitAtEnd<'a, R> {
    inner: R,
    wait: &'a (dyn Fn() -> Result<()> + Sync),
    waited: bool,
}

impl<R: Read> Read for WaitAtEnd<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.waited {
            (self.wait)().map_err(io::Error::other)?;
            self.waited = true;
        }
        Ok(n)
    }
}

fn report(progress: TransferProgress<'_>, d: &Descriptor, done: u64, state: &'static str) -> Result<()> {
    progress(TransferEvent { digest: d.digest.clone(), done, total: Some(d.size), state })
}

/// Empty `dir` again for another attempt.
fn reset_dir(dir: &std::path::Path) -> Result<()> {
    crate::sys::remove_tree(dir)?;
    std::fs::create_dir(dir).map_err(|e| Error::from(e).at(dir))
}

/// One attempt at a layer, resuming from the partial file when `resume`.
struct Ctx<'a> {
    client: &'a Client,
    r: &'a Reference,
    privilege: Privilege,
    progress: TransferProgress<'a>,
    stop: &'a AtomicBool,
    completion: &'a Completion,
}

fn pull_once(cx: &Ctx<'_>, index: usize, job: &LayerPull, resume: bool) -> Result<ImportReport> {
    let (client, r, privilege, progress, stop) = (cx.client, cx.r, cx.privilege, cx.progress, cx.stop);
    let d = &job.desc;
    let url = client.url(&r.registry, &format!("{}/blobs/{}", r.repository, d.digest));
    let mut have = 0u64;
    if resume {
        if let Some(p) = &job.partial {
            have = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0).min(d.size);
        }
    }
    let mut net = BlobStream { client, r, url, digest: d.digest.clone(), size: d.size, body: None, offset: 0, failures: 0 };
    let start = net.open(have)?;
    // What is already on disk is read back (and hashed again) before the rest comes from the network.
    let (kept, file): (Box<dyn Read + Send>, Option<File>) = match &job.partial {
        Some(p) => {
            let f = if start > 0 {
                let mut old = File::open(p).map_err(|e| Error::from(e).at(p))?;
                let mut head = Vec::new();
                (&mut old).take(start).read_to_end(&mut head)?;
                let app = OpenOptions::new().append(true).open(p).ok();
                if let Some(a) = &app {
                    let _ = a.set_len(start);
                }
                (Box::new(io::Cursor::new(head)) as Box<dyn Read + Send>, app)
            } else {
                (Box::new(io::empty()) as Box<dyn Read + Send>, File::create(p).ok())
            };
            f
        }
        None => (Box::new(io::empty()), None),
    };
    // Only bytes from the network are appended to the partial file; everything is hashed.
    let fresh = Tee { inner: net, file, hasher: None };
    let mut tee = Tee { inner: kept.chain(fresh), file: None, hasher: Some(Hasher::default()) };
    // Not the shared cache: directories of this pull are read before they are complete.
    let lower: Option<Lower> = if job.lower.is_empty() { None } else { Some(Lower::open(&job.lower, privilege)?) };
    let split = job.split.as_ref().map(|p| File::create(p).map_err(|e| Error::from(e).at(p))).transpose()?;
    let mut on_bytes = |n: u64| -> Result<()> {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Invalid("cancelled: another layer failed".into()));
        }
        report(progress, d, n, "downloading")
    };
    let opts = ImportOptions { privilege, lower: lower.as_ref(), max_size: None, progress: Some(&mut on_bytes) };
    let wait = || cx.completion.wait_below(index, stop);
    let input = WaitAtEnd { inner: &mut tee, wait: &wait, waited: false };
    let imported = import_layer(input, &job.dest, split, opts);
    // Whatever the importer left unread (padding after the tar's end) is part of the blob too.
    let drained = match &imported {
        Ok(_) | Err(Error::InvalidArchive(_) | Error::Truncated { .. }) => io::copy(&mut tee, &mut io::sink()).map_err(Error::from),
        Err(_) => Ok(0),
    };
    let rep = match (imported, drained) {
        (Ok(rep), Ok(_)) => rep,
        (Ok(_), Err(e)) => return Err(e),
        // Bytes that do not match the digest explain a layer that does not decompress or parse.
        (Err(e @ (Error::InvalidArchive(_) | Error::Truncated { .. })), Ok(_)) => {
            let h = tee.hasher.as_ref().expect("made with a hasher");
            if h.digest() != d.digest {
                return Err(mismatch(r, d, h));
            }
            return Err(e);
        }
        (Err(e), _) => return Err(e),
    };
    report(progress, d, d.size, "verifying")?;
    let hasher = tee.hasher.take().expect("made with a hasher");
    if hasher.digest() != d.digest || hasher.count != d.size {
        return Err(mismatch(r, d, &hasher));
    }
    Ok(rep)
}

fn mismatch(r: &Reference, d: &Descriptor, h: &Hasher) -> Error {
    Error::archive(format!("blob {} of {}: digest mismatch: the {} bytes received hash to {}", d.digest, r.name(), h.count, h.digest()))
}

/// Pull one layer: resume from a partial file if there is one, and start over once when that fails
/// (a damaged partial file), or when the connection broke where the registry cannot resume.
fn pull_layer(cx: &Ctx<'_>, index: usize, job: &LayerPull) -> Result<ImportReport> {
    let (r, progress, stop) = (cx.r, cx.progress, cx.stop);
    if job.desc.is_foreign() || !job.desc.urls.is_empty() {
        return Err(Error::Invalid(format!(
            "layer {} of {} is a foreign layer (kept outside the registry): pulling foreign layers is not supported",
            job.desc.digest,
            r.name()
        )));
    }
    let resumable = job.partial.as_ref().is_some_and(|p| p.exists());
    let first = pull_once(cx, index, job, resumable);
    let rep = match first {
        Err(e) if !stop.load(Ordering::Relaxed) && (resumable || matches!(e, Error::Registry { status: Some(200), .. })) => {
            if let Some(p) = &job.partial {
                let _ = std::fs::remove_file(p);
            }
            reset_dir(&job.dest)?;
            pull_once(cx, index, job, false)?
        }
        other => other?,
    };
    if let Some(p) = &job.partial {
        let _ = std::fs::remove_file(p);
    }
    report(progress, &job.desc, job.desc.size, "done")?;
    Ok(rep)
}

/// Pull every job, `max_parallel` at a time. The first failure stops the others; the caller throws the
/// staging directories away.
pub fn pull_layers(client: &Client, r: &Reference, jobs: &[LayerPull], privilege: Privilege, progress: TransferProgress<'_>) -> Result<Vec<ImportReport>> {
    for j in jobs {
        report(progress, &j.desc, 0, "waiting")?;
    }
    let stop = AtomicBool::new(false);
    let completion = Completion { done: Mutex::new(vec![false; jobs.len()]), changed: Condvar::new() };
    let cx = Ctx { client, r, privilege, progress, stop: &stop, completion: &completion };
    // Jobs are taken in order, so the lowest unfinished one never waits: no deadlock.
    run_all(jobs.len(), client.config().max_parallel.clamp(1, 16), &stop, |i| {
        let rep = pull_layer(&cx, i, &jobs[i])?;
        completion.mark(i);
        Ok(rep)
    })
}
