//! A plain `GET` of a URL through the registry transport (TLS verified with the same CAs, redirects
//! followed, retries, plain HTTP only for loopback and insecure hosts), for a Dockerfile's `ADD <url>`:
//! one HTTP client for the whole program.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::transport::{header, status_error, Payload};
use super::Client;
use crate::digest::HashingReader;
use crate::error::{Error, Result};

/// What [`Client::fetch`] wrote.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    pub size: u64,
    /// The `Last-Modified` header, as sent.
    pub last_modified: Option<String>,
}

impl Client {
    /// `GET url` (no credentials are sent), streamed into the new file `dest` (mode 0600, as Docker
    /// gives a downloaded file) while hashing it.
    pub fn fetch(&self, url: &str, dest: &Path) -> Result<Fetched> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::archive(format!("{url}: only http:// and https:// URLs can be fetched")));
        }
        let (resp, _) = self.transport.request("GET", url, &[], None, Payload::Empty)?;
        if !resp.status().is_success() {
            return Err(status_error(resp, &format!("GET {url}")));
        }
        let last_modified = header(&resp, "last-modified");
        let body = resp.into_body().into_with_config().limit(u64::MAX).reader();
        let mut reader = HashingReader::new(body);
        let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dest).map_err(|e| Error::from(e).at(dest.as_os_str()))?;
        io::copy(&mut reader, &mut out).map_err(|e| Error::from(e).at(dest.as_os_str()))?;
        out.sync_all()?;
        Ok(Fetched { digest: reader.hasher.digest(), size: reader.hasher.count, last_modified })
    }
}
