//! A layer straight from its member of an archive into the layer importer: no copy, and the digest of
//! the member's bytes (the blob digest a manifest names) computed on the way.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::archive::Archive;
use crate::compress::Format;
use crate::digest::HashingReader;
use crate::error::{Error, Result};
use crate::layer::{import_layer, ImportOptions, ImportReport};

/// What importing a layer from an archive found.
#[derive(Debug, Clone)]
pub struct LayerImport {
    pub report: ImportReport,
    /// sha256 of the member's bytes as stored (compressed or not).
    pub blob_digest: String,
}

impl Archive {
    /// Import the layer tar held by member `name` (plain, gzip, zstd, bzip2 or xz) into the empty directory `dest`,
    /// as [`import_layer`] does; `opts.progress` counts the member's bytes.
    pub fn import_layer(&self, name: &str, dest: &Path, split: Option<File>, opts: ImportOptions<'_>) -> Result<LayerImport> {
        let what = format!("layer {name:?}");
        let member = self.member(name)?;
        let compressed = Format::detect(&member.head(6).map_err(|e| Error::from(e).about(&what))?) != Format::Plain;
        if !compressed {
            // The importer reads the member to its end: the tar's digest is the blob's.
            let report = import_layer(member, dest, split, opts).map_err(|e| e.about(&what))?;
            let blob_digest = report.diff_id.clone();
            return Ok(LayerImport { report, blob_digest });
        }
        let mut hashing = HashingReader::new(member);
        let report = import_layer(&mut hashing, dest, split, opts).map_err(|e| e.about(&what))?;
        // Whatever follows the compressed stream is part of the blob too.
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| Error::from(e).about(&what))?;
        Ok(LayerImport { report, blob_digest: hashing.hasher.digest() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256;

    #[test]
    fn plain_and_compressed_members_give_their_blob_digest() {
        let t = tempfile::tempdir().unwrap();
        let mut layer = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        layer.append_data(&mut h, "hello", &b"world"[..]).unwrap();
        let plain = layer.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let packed = gz.finish().unwrap();
        let mut outer = tar::Builder::new(Vec::new());
        for (name, data) in [("plain.tar", &plain), ("packed.tar.gz", &packed)] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            outer.append_data(&mut h, name, &data[..]).unwrap();
        }
        let path = t.path().join("outer.tar");
        std::fs::write(&path, outer.into_inner().unwrap()).unwrap();
        let arc = Archive::open(&path, &t.path().join("spool")).unwrap();
        for (name, blob) in [("plain.tar", &plain), ("packed.tar.gz", &packed)] {
            let dest = t.path().join(name.replace('.', "-"));
            std::fs::create_dir(&dest).unwrap();
            let mut seen = 0;
            let mut progress = |n: u64| {
                seen = n;
                Ok(())
            };
            let opts = ImportOptions { progress: Some(&mut progress), ..ImportOptions::default() };
            let got = arc.import_layer(name, &dest, None, opts).unwrap();
            assert_eq!(got.report.diff_id, sha256(&plain));
            assert_eq!(got.blob_digest, sha256(blob));
            assert_eq!(std::fs::read(dest.join("hello")).unwrap(), b"world");
            assert_eq!(seen, blob.len() as u64, "progress counts the member's bytes");
        }
    }
}
