//! Pushing an image: per layer `HEAD` when its blob digest is known (never send a blob twice), a
//! cross-repository mount when it is known in another repository, else one streamed `PATCH` of the
//! layer compressed on the fly (chunked upload when the registry will not take a stream); then the
//! config and the manifest.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use super::manifest::{self, Descriptor};
use super::parallel::run_all;
use super::transport::{header, join_url, query_escape, status_error, Payload};
use super::{scope, Client, Reference, TransferEvent, TransferProgress};
use crate::attrs::Privilege;
use crate::compress::Compression;
use crate::digest::sha256;
use crate::error::{Error, Result};
use crate::layer::{LayerStream, LayerTar};
use crate::overlap::{chunk_channel, ChunkReader};
use crate::union::Lower;

/// A blob known (from a pull or an earlier push) to hold a layer, in the same compression, in
/// `repository` of the destination registry.
#[derive(Clone, Debug)]
pub struct KnownBlob {
    pub digest: String,
    pub repository: String,
}

/// A layer to push: its directory, its tar-split records (else the tree is walked over `lower`, top
/// first), its diff_id, and the blobs known to hold it.
#[derive(Clone, Debug)]
pub struct PushLayer {
    pub dir: PathBuf,
    pub split: Option<PathBuf>,
    pub lower: Vec<PathBuf>,
    pub diff_id: String,
    pub known: Vec<KnownBlob>,
}

#[derive(Clone, Debug)]
pub struct PushedBlob {
    pub diff_id: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// `exists`, `mounted` or `uploaded`.
    pub how: &'static str,
}

#[derive(Clone, Debug)]
pub struct PushReport {
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub layers: Vec<PushedBlob>,
}

/// Upload chunk size when a registry needs chunked uploads.
const CHUNK: usize = 8 << 20;

struct Pusher<'a> {
    client: &'a Client,
    dest: &'a Reference,
    privilege: Privilege,
    compression: Compression,
    /// How many layers are pushed at once (each compresses on its share of the cores).
    streams: usize,
    progress: TransferProgress<'a>,
    stop: &'a AtomicBool,
}

/// Counts the bytes sent for progress events, and stops the upload when asked.
struct Counting<'a, R> {
    inner: R,
    digest: String,
    sent: u64,
    reported: u64,
    progress: TransferProgress<'a>,
    stop: &'a AtomicBool,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other(Error::Invalid("cancelled: another layer failed".into())));
        }
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        if self.sent - self.reported >= 1 << 20 {
            self.reported = self.sent;
            (self.progress)(TransferEvent { digest: self.digest.clone(), done: self.sent, total: None, state: "uploading" })
                .map_err(io::Error::other)?;
        }
        Ok(n)
    }
}

/// Read `src` to its end on a helper thread, `f` consuming the bytes meanwhile (the layer is compressed
/// while the previous bytes are sent); returns `f`'s result.
fn read_ahead<R: Read + Send, T>(src: &mut R, f: impl FnOnce(&mut ChunkReader) -> T) -> T {
    let (tx, mut ahead) = chunk_channel(2, || io::Error::other("the layer producer stopped"));
    std::thread::scope(|s| {
        s.spawn(move || loop {
            let msg = tx.next_chunk(src);
            let stop = msg.as_ref().map_or(true, |b| b.is_empty());
            if !tx.send(msg) || stop {
                return;
            }
        });
        let out = f(&mut ahead);
        // Dropping `ahead` stops the producer if `f` gave up early.
        drop(ahead);
        out
    })
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={}", query_escape(digest))
}

impl Pusher<'_> {
    fn scopes(&self) -> Vec<String> {
        vec![scope(&self.dest.repository, "pull,push")]
    }

    fn blob_url(&self, digest: &str) -> String {
        self.client.url(&self.dest.registry, &format!("{}/blobs/{digest}", self.dest.repository))
    }

    /// The size of the blob if the destination repository has it.
    fn head(&self, digest: &str) -> Result<Option<u64>> {
        let (resp, _) = self.client.send(&self.dest.registry, &self.scopes(), "HEAD", &self.blob_url(digest), &[], Payload::Empty)?;
        match resp.status().as_u16() {
            200 => Ok(Some(header(&resp, "content-length").and_then(|l| l.parse().ok()).unwrap_or(0))),
            404 => Ok(None),
            _ => Err(status_error(resp, &format!("checking blob {digest} in {}", self.dest.name()))),
        }
    }

    /// `POST .../blobs/uploads/` (with a mount request when `mount` names a blob and its repository):
    /// `Ok(None)` when mounted, else the upload's location.
    fn start(&self, mount: Option<&KnownBlob>) -> Result<Option<String>> {
        let base = self.client.url(&self.dest.registry, &format!("{}/blobs/uploads/", self.dest.repository));
        let mut scopes = self.scopes();
        let url = match mount {
            Some(k) => {
                scopes.push(scope(&k.repository, "pull"));
                format!("{base}?mount={}&from={}", query_escape(&k.digest), query_escape(&k.repository))
            }
            None => base.clone(),
        };
        let (resp, final_url) = self.client.send(&self.dest.registry, &scopes, "POST", &url, &[], Payload::Empty)?;
        match resp.status().as_u16() {
            201 if mount.is_some() => Ok(None),
            202 => {
                let loc = header(&resp, "location").ok_or_else(|| Error::Registry {
                    status: Some(202),
                    code: None,
                    message: "the registry started an upload without saying where (no Location)".into(),
                })?;
                Ok(Some(join_url(&final_url, &loc)))
            }
            _ => Err(status_error(resp, &format!("starting an upload to {}", self.dest.name()))),
        }
    }

    fn finish(&self, location: &str, digest: &str, body: &[u8]) -> Result<()> {
        let hs = vec![("Content-Type".to_string(), "application/octet-stream".to_string())];
        let (resp, _) = self.client.send(&self.dest.registry, &self.scopes(), "PUT", &with_digest(location, digest), &hs, Payload::Bytes(body))?;
        if resp.status().as_u16() != 201 && !resp.status().is_success() {
            return Err(status_error(resp, &format!("completing the upload of {digest} to {}", self.dest.name())));
        }
        Ok(())
    }

    fn stream_of(&self, layer: &PushLayer) -> Result<LayerStream> {
        let tar = match &layer.split {
            Some(s) if s.exists() => LayerTar::from_split(&layer.dir, File::open(s).map_err(|e| Error::from(e).at(s))?)?,
            _ => {
                let lower = if layer.lower.is_empty() { None } else { Some(Lower::shared(&layer.lower, self.privilege)?) };
                LayerTar::walk(&layer.dir, self.privilege, lower)?
            }
        };
        LayerStream::one_of(tar, self.compression, self.streams)
    }

    fn check_diff_id(&self, layer: &PushLayer, stream: &LayerStream) -> Result<String> {
        if let Some(d) = stream.diff_id() {
            if d != layer.diff_id {
                return Err(Error::corrupt(format!("layer {}: its tar hashes to {d}, its diff_id is {}", layer.dir.display(), layer.diff_id)));
            }
        }
        stream.digest().ok_or_else(|| Error::Invalid("the layer stream did not end".into()))
    }

    /// One streamed PATCH. `Ok(None)` when the registry refuses a stream (the caller uploads in chunks).
    fn upload_streamed(&self, layer: &PushLayer, location: String) -> Result<Option<(String, u64)>> {
        let stream = self.stream_of(layer)?;
        let mut counting = Counting { inner: stream, digest: layer.diff_id.clone(), sent: 0, reported: 0, progress: self.progress, stop: self.stop };
        let hs = vec![("Content-Type".to_string(), "application/octet-stream".to_string())];
        let sent = read_ahead(&mut counting, |ahead| {
            self.client.send(&self.dest.registry, &self.scopes(), "PATCH", &location, &hs, Payload::Stream(ahead))
        });
        let (resp, final_url) = sent?;
        let s = resp.status().as_u16();
        if matches!(s, 400 | 405 | 411 | 413 | 415 | 416 | 501) {
            return Ok(None);
        }
        if s != 202 && !resp.status().is_success() {
            return Err(status_error(resp, &format!("uploading layer {} to {}", layer.diff_id, self.dest.name())));
        }
        let next = header(&resp, "location").map(|l| join_url(&final_url, &l)).unwrap_or(location);
        let digest = self.check_diff_id(layer, &counting.inner)?;
        let size = counting.sent;
        self.finish(&next, &digest, &[])?;
        Ok(Some((digest, size)))
    }

    /// Chunked upload: `Content-Range` and `Content-Length` per chunk.
    fn upload_chunked(&self, layer: &PushLayer) -> Result<(String, u64)> {
        let mut location = self.start(None)?.expect("a plain upload is never mounted");
        let stream = self.stream_of(layer)?;
        let mut counting = Counting { inner: stream, digest: layer.diff_id.clone(), sent: 0, reported: 0, progress: self.progress, stop: self.stop };
        let mut offset = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let mut filled = 0;
            while filled < CHUNK {
                let n = counting.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            let end = offset + filled as u64 - 1;
            let hs = vec![
                ("Content-Type".to_string(), "application/octet-stream".to_string()),
                ("Content-Range".to_string(), format!("{offset}-{end}")),
            ];
            let (resp, final_url) = self.client.send(&self.dest.registry, &self.scopes(), "PATCH", &location, &hs, Payload::Bytes(&buf[..filled]))?;
            if resp.status().as_u16() != 202 {
                return Err(status_error(resp, &format!("uploading a chunk of layer {} to {}", layer.diff_id, self.dest.name())));
            }
            // Distribution answers `Range: 0-N` (no `bytes=`): the bytes it has.
            if let Some(range) = header(&resp, "range") {
                let got = range.trim_start_matches("bytes=").rsplit('-').next().and_then(|n| n.trim().parse::<u64>().ok());
                if got.is_some_and(|g| g != end) {
                    return Err(Error::Registry { status: Some(202), code: None, message: format!("the registry kept bytes up to {range}, not to {end}") });
                }
            }
            location = header(&resp, "location").map(|l| join_url(&final_url, &l)).unwrap_or(location);
            offset += filled as u64;
        }
        let digest = self.check_diff_id(layer, &counting.inner)?;
        self.finish(&location, &digest, &[])?;
        Ok((digest, offset))
    }

    fn layer(&self, layer: &PushLayer, oci: bool) -> Result<PushedBlob> {
        let media_type = manifest::layer_media_type(oci, self.compression).to_string();
        let event = |done: u64, total: Option<u64>, state: &'static str, digest: &str| {
            (self.progress)(TransferEvent { digest: digest.to_string(), done, total, state })
        };
        let done = |digest: String, size: u64, how: &'static str| -> Result<PushedBlob> {
            event(size, Some(size), if how == "uploaded" { "done" } else { how }, &layer.diff_id)?;
            Ok(PushedBlob { diff_id: layer.diff_id.clone(), digest, size, media_type: media_type.clone(), how })
        };
        event(0, None, "waiting", &layer.diff_id)?;
        for k in layer.known.iter().filter(|k| k.repository == self.dest.repository) {
            if let Some(size) = self.head(&k.digest)? {
                return done(k.digest.clone(), size, "exists");
            }
        }
        // One mount attempt (the first other repository known to hold the blob).
        let mut location = None;
        if let Some(k) = layer.known.iter().find(|k| k.repository != self.dest.repository) {
            match self.start(Some(k))? {
                None => {
                    let size = self.head(&k.digest)?.unwrap_or(0);
                    return done(k.digest.clone(), size, "mounted");
                }
                // 202: the registry would not mount; the upload it started is used instead.
                Some(loc) => location = Some(loc),
            }
        }
        let location = match location {
            Some(l) => l,
            None => self.start(None)?.expect("a plain upload is never mounted"),
        };
        let (digest, size) = match self.upload_streamed(layer, location)? {
            Some(r) => r,
            None => self.upload_chunked(layer)?,
        };
        done(digest, size, "uploaded")
    }

    fn config(&self, config: &[u8]) -> Result<Descriptor> {
        let digest = sha256(config);
        if self.head(&digest)?.is_none() {
            let loc = self.start(None)?.expect("a plain upload is never mounted");
            self.finish(&loc, &digest, config)?;
        }
        Ok(Descriptor { media_type: String::new(), digest, size: config.len() as u64, urls: Vec::new() })
    }
}

/// Push `layers` (bottom first, several at a time), the config and the manifest (OCI with `oci`, and
/// always for zstd layers, which Docker's schema 2 has no media type for).
#[allow(clippy::too_many_arguments)]
pub fn push_image(
    client: &Client,
    dest: &Reference,
    layers: &[PushLayer],
    config: &[u8],
    oci: bool,
    compression: Compression,
    privilege: Privilege,
    progress: TransferProgress<'_>,
) -> Result<PushReport> {
    let oci = oci || compression == Compression::Zstd;
    // Learn how the registry authenticates first, as Docker does: no request then needs a 401 round trip.
    client.ping(&dest.registry)?;
    let stop = AtomicBool::new(false);
    let parallel = client.config().max_parallel.clamp(1, 16);
    let p = Pusher { client, dest, privilege, compression, streams: parallel.min(layers.len()), progress, stop: &stop };
    let pushed = run_all(layers.len(), parallel, &stop, |i| p.layer(&layers[i], oci))?;
    let mut cfg = p.config(config)?;
    cfg.media_type = if oci { manifest::OCI_CONFIG } else { manifest::DOCKER_CONFIG }.to_string();
    let descs: Vec<Descriptor> = pushed
        .iter()
        .map(|b| Descriptor { media_type: b.media_type.clone(), digest: b.digest.clone(), size: b.size, urls: Vec::new() })
        .collect();
    let (bytes, mt) = manifest::build(oci, &cfg, &descs);
    let digest = sha256(&bytes);
    if let Some(want) = &dest.digest {
        if want != &digest {
            return Err(Error::Invalid(format!("the manifest pushed hashes to {digest}, not to the digest {want} the destination names")));
        }
    }
    let object = dest.tag.clone().unwrap_or_else(|| digest.clone());
    let url = client.url(&dest.registry, &format!("{}/manifests/{object}", dest.repository));
    let hs = vec![("Content-Type".to_string(), mt.to_string())];
    let (resp, _) = client.send(&dest.registry, &p.scopes(), "PUT", &url, &hs, Payload::Bytes(&bytes))?;
    if !resp.status().is_success() {
        return Err(status_error(resp, &format!("pushing the manifest of {}:{object}", dest.name())));
    }
    Ok(PushReport { manifest_digest: digest, manifest: bytes, layers: pushed })
}
