//! The registry client against a tiny in-process HTTP server on 127.0.0.1: the Bearer token flow,
//! retries (500, 429 with Retry-After), a connection dropped mid-blob (resumed with Range), a blob that
//! does not match its digest, a redirect to another host (no credentials there), and a push.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::{sha256, Error, Privilege, Tar};
use ovlcore_core::{Credential, Descriptor, LayerPull, Reference, RegistryClient, RegistryConfig, TransferEvent};

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

enum Resp {
    Full { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// Announce `len` bytes, send `body` (fewer), then drop the connection.
    Cut { len: usize, body: Vec<u8> },
}

fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Resp {
    Resp::Full { status, headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), body: body.into() }
}

type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

/// A server answering with `handler`; every request is logged.
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<Req>>>,
}

fn read_req(r: &mut BufReader<TcpStream>) -> Option<Req> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = Vec::new();
    if let Some(n) = headers.get("content-length").and_then(|n| n.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    } else if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Some(Req { method, path, headers, body })
}

fn serve(handler: Handler) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (handler, log) = (handler.clone(), l2.clone());
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                loop {
                    let Some(req) = read_req(&mut r) else {
                        // Not HTTP (a TLS hello): answer as Go's server does, then close.
                        let _ = w.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n");
                        return;
                    };
                    log.lock().unwrap().push(req.clone());
                    match handler(&req) {
                        Resp::Full { status, headers, body } => {
                            let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                            for (k, v) in headers {
                                out += &format!("{k}: {v}\r\n");
                            }
                            out += "\r\n";
                            let mut bytes = out.into_bytes();
                            if req.method != "HEAD" {
                                bytes.extend_from_slice(&body);
                            }
                            if w.write_all(&bytes).is_err() {
                                return;
                            }
                        }
                        Resp::Cut { len, body } => {
                            let _ = w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes());
                            let _ = w.write_all(&body);
                            let _ = w.flush();
                            let _ = w.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                    }
                }
            });
        }
    });
    Server { port, log }
}

fn test_config() -> RegistryConfig {
    RegistryConfig { retries: 4, backoff_ms: 1, auth_file: Some("/nonexistent/auth.json".into()), ..RegistryConfig::default() }
}

fn no_progress(_: TransferEvent) -> common::Result<()> {
    Ok(())
}

/// An image: config + one gzip layer, with the manifest naming them.
struct Image {
    layer: Vec<u8>,
    diff_id: String,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

fn image() -> Image {
    let plain = Tar::new().dir("etc").file("etc/hello", vec![7u8; 300_000]).bytes();
    let diff_id = sha256(&plain);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&plain).unwrap();
    let layer = e.finish().unwrap();
    let config = format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#).into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
        "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{}"}},
        "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{}"}}]}}"#,
        config.len(),
        sha256(&config),
        layer.len(),
        sha256(&layer)
    )
    .into_bytes();
    Image { layer, diff_id, config, manifest }
}

/// A registry serving `img` as `app:1`, its blob through `blob`.
fn registry(img: &Image, blob: Handler) -> Server {
    let manifest = img.manifest.clone();
    let config = img.config.clone();
    let config_path = format!("/v2/app/blobs/{}", sha256(&img.config));
    let layer_path = format!("/v2/app/blobs/{}", sha256(&img.layer));
    serve(Arc::new(move |r: &Req| {
        if r.path == "/v2/" {
            resp(200, &[], "{}")
        } else if r.path == "/v2/app/manifests/1" {
            resp(200, &[("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")], manifest.clone())
        } else if r.path == config_path {
            resp(200, &[], config.clone())
        } else if r.path == layer_path {
            blob(r)
        } else {
            resp(404, &[], r#"{"errors":[{"code":"NOT_FOUND","message":"no"}]}"#)
        }
    }))
}

fn pull(port: u16, img: &Image, client: &RegistryClient) -> common::Result<String> {
    let r = Reference::parse(&format!("127.0.0.1:{port}/app:1")).unwrap();
    let res = client.resolve(&r, Some("linux/amd64"))?;
    assert_eq!(res.config, img.config);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("content");
    std::fs::create_dir(&dest).unwrap();
    let d = &res.layers[0];
    let job = LayerPull {
        desc: Descriptor { media_type: d.media_type.clone(), digest: d.digest.clone(), size: d.size, urls: vec![] },
        dest: dest.clone(),
        split: None,
        lower: vec![],
        partial: None,
    };
    let reps = client.pull_layers(&r, &[job], Privilege::Rootless, &no_progress)?;
    assert_eq!(std::fs::read(dest.join("etc/hello")).unwrap().len(), 300_000);
    Ok(reps[0].diff_id.clone())
}

#[test]
fn pulls_over_plain_http_after_a_tls_attempt_with_retries_and_a_resumed_blob() {
    let img = image();
    let layer = img.layer.clone();
    let calls = Arc::new(Mutex::new(0));
    let c2 = calls.clone();
    let srv = registry(
        &img,
        Arc::new(move |r: &Req| {
            let mut n = c2.lock().unwrap();
            *n += 1;
            match (*n, r.headers.get("range")) {
                (1, _) => resp(500, &[], "boom"),
                (2, _) => resp(429, &[("Retry-After", "0")], ""),
                (3, _) => Resp::Cut { len: layer.len(), body: layer[..layer.len() / 3].to_vec() },
                (_, Some(range)) => {
                    let from: usize = range.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
                    let cr = format!("bytes {from}-{}/{}", layer.len() - 1, layer.len());
                    resp(206, &[("Content-Range", &cr)], layer[from..].to_vec())
                }
                _ => resp(200, &[], layer.clone()),
            }
        }),
    );
    let client = RegistryClient::new(test_config(), None);
    assert_eq!(pull(srv.port, &img, &client).unwrap(), img.diff_id);
    let log = srv.log.lock().unwrap();
    let ranges: Vec<_> = log.iter().filter_map(|r| r.headers.get("range")).collect();
    assert_eq!(ranges, vec![&format!("bytes={}-", img.layer.len() / 3)]);
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_an_error() {
    let img = image();
    let mut bad = image().layer;
    // Same length, other bytes: a valid gzip of another tar would also do; flipping the CRC is enough.
    let n = bad.len();
    bad[n - 5] ^= 0xff;
    let srv = registry(&img, Arc::new(move |_| resp(200, &[], bad.clone())));
    let err = pull(srv.port, &img, &RegistryClient::new(test_config(), None)).unwrap_err();
    assert!(matches!(err, Error::InvalidArchive(_)), "{err:?}");
}

#[test]
fn bearer_tokens_are_fetched_once_and_credentials_never_follow_a_redirect_elsewhere() {
    let img = image();
    let layer = img.layer.clone();
    let storage = serve(Arc::new(move |_| resp(200, &[], layer.clone())));
    let storage_port = storage.port;
    let token_port = Arc::new(Mutex::new(0u16));
    let tp = token_port.clone();
    let manifest = img.manifest.clone();
    let config = img.config.clone();
    let cfg_path = format!("/v2/app/blobs/{}", sha256(&img.config));
    let layer_path = format!("/v2/app/blobs/{}", sha256(&img.layer));
    let srv = serve(Arc::new(move |r: &Req| {
        if r.path.starts_with("/token") {
            let basic = format!("Basic {}", base64_encode("alice:pw"));
            let scoped = !r.path.contains("scope=") || r.path.contains("scope=repository%3Aapp%3Apull");
            if r.headers.get("authorization") != Some(&basic) || !scoped {
                return resp(401, &[], "");
            }
            return resp(200, &[], r#"{"access_token":"tok","expires_in":300}"#);
        }
        if r.headers.get("authorization").map(String::as_str) != Some("Bearer tok") {
            let ch = format!(r#"Bearer realm="http://127.0.0.1:{}/token",service="fake""#, tp.lock().unwrap());
            return resp(401, &[("WWW-Authenticate", &ch)], r#"{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}"#);
        }
        if r.path == "/v2/" {
            resp(200, &[], "{}")
        } else if r.path == "/v2/app/manifests/1" {
            resp(200, &[("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")], manifest.clone())
        } else if r.path == cfg_path {
            resp(200, &[], config.clone())
        } else if r.path == layer_path {
            let loc = format!("http://localhost:{storage_port}/blob?sig=1");
            resp(307, &[("Location", &loc)], "")
        } else {
            resp(404, &[], "")
        }
    }));
    *token_port.lock().unwrap() = srv.port;
    let client = RegistryClient::new(test_config(), Some(Credential::Basic { user: "alice".into(), password: "pw".into() }));
    assert_eq!(pull(srv.port, &img, &client).unwrap(), img.diff_id);
    client.login(&format!("127.0.0.1:{}", srv.port)).unwrap();
    {
        let log = srv.log.lock().unwrap();
        assert_eq!(log.iter().filter(|r| r.path.starts_with("/token") && r.path.contains("pull")).count(), 1, "one token for the pull scope");
        let st = storage.log.lock().unwrap();
        assert_eq!(st.len(), 1);
        assert!(!st[0].headers.contains_key("authorization"), "credentials went to another host");
    }

    let wrong = RegistryClient::new(test_config(), Some(Credential::Basic { user: "alice".into(), password: "nope".into() }));
    let err = wrong.login(&format!("127.0.0.1:{}", srv.port)).unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn an_unknown_tag_is_not_found() {
    let img = image();
    let srv = registry(&img, Arc::new(|_| resp(404, &[], "")));
    let r = Reference::parse(&format!("127.0.0.1:{}/app:2", srv.port)).unwrap();
    let err = RegistryClient::new(test_config(), None).resolve(&r, None).err().unwrap();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
}

/// A registry that takes uploads only in chunks with `Content-Range` (a streamed PATCH gets 411), and
/// answers `Range: 0-N` without `bytes=` as Debian's distribution does.
/// Blobs (and manifests) by digest (or path).
type Stored = Arc<Mutex<HashMap<String, Vec<u8>>>>;

fn chunk_only_registry() -> (Server, Stored) {
    let blobs: Stored = Arc::new(Mutex::new(HashMap::new()));
    let uploads: Stored = Arc::new(Mutex::new(HashMap::new()));
    let b2 = blobs.clone();
    let next = Arc::new(Mutex::new(0));
    let srv = serve(Arc::new(move |r: &Req| {
        let path = r.path.split('?').next().unwrap().to_string();
        let query = r.path.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
        match r.method.as_str() {
            "GET" if path == "/v2/" => resp(200, &[], "{}"),
            "HEAD" => match b2.lock().unwrap().get(path.rsplit('/').next().unwrap()) {
                Some(b) => resp(200, &[("Docker-Content-Digest", &sha256(b))], b.clone()),
                None => resp(404, &[], ""),
            },
            "POST" => {
                let mut n = next.lock().unwrap();
                *n += 1;
                uploads.lock().unwrap().insert(n.to_string(), Vec::new());
                resp(202, &[("Location", &format!("/upload/{n}?_state=x"))], "")
            }
            "PATCH" => {
                if r.headers.contains_key("transfer-encoding") || !r.headers.contains_key("content-range") {
                    return resp(411, &[], "length required");
                }
                let id = path.rsplit('/').next().unwrap().to_string();
                let mut ups = uploads.lock().unwrap();
                let buf = ups.get_mut(&id).unwrap();
                let start: usize = r.headers["content-range"].split('-').next().unwrap().parse().unwrap();
                assert_eq!(start, buf.len(), "chunks in order");
                buf.extend_from_slice(&r.body);
                let range = format!("0-{}", buf.len() - 1);
                resp(202, &[("Location", &format!("/upload/{id}?_state=y")), ("Range", &range)], "")
            }
            "PUT" if path.starts_with("/upload/") => {
                let id = path.rsplit('/').next().unwrap().to_string();
                let mut data = uploads.lock().unwrap().remove(&id).unwrap();
                data.extend_from_slice(&r.body);
                let digest = query.split('&').find_map(|kv| kv.strip_prefix("digest=")).unwrap().replace("%3A", ":");
                if sha256(&data) != digest {
                    return resp(400, &[], r#"{"errors":[{"code":"DIGEST_INVALID","message":"no"}]}"#);
                }
                b2.lock().unwrap().insert(digest, data);
                resp(201, &[], "")
            }
            "PUT" if path.starts_with("/v2/app/manifests/") => {
                b2.lock().unwrap().insert(path.clone(), r.body.clone());
                resp(201, &[], "")
            }
            _ => resp(404, &[], ""),
        }
    }));
    (srv, blobs)
}

#[test]
fn a_push_falls_back_to_chunks_and_a_second_push_sends_no_blob() {
    use ovlcore_core::{import_layer, Compression, ImportOptions, KnownBlob, PushLayer};
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("diff");
    std::fs::create_dir(&content).unwrap();
    let big: Vec<u8> = (0..(12u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let plain = Tar::new().dir("srv").file("srv/big", &big).bytes();
    let opts = ImportOptions { privilege: Privilege::Rootless, ..ImportOptions::default() };
    let split = dir.path().join("tar-split");
    let rep = import_layer(&plain[..], &content, Some(std::fs::File::create(&split).unwrap()), opts).unwrap();
    let (srv, blobs) = chunk_only_registry();
    let client = RegistryClient::new(test_config(), None);
    let dest = Reference::parse(&format!("127.0.0.1:{}/app:1", srv.port)).unwrap();
    let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#, rep.diff_id).into_bytes();
    let layer = PushLayer { dir: content.clone(), split: Some(split), lower: vec![], diff_id: rep.diff_id.clone(), known: vec![] };
    let first = client.push(&dest, std::slice::from_ref(&layer), &config, false, Compression::Gzip, Privilege::Rootless, &no_progress).unwrap();
    let blob = &first.layers[0];
    assert_eq!(blob.how, "uploaded");
    {
        let stored = blobs.lock().unwrap();
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&stored[&blob.digest][..]).read_to_end(&mut out).unwrap();
        assert_eq!(sha256(&out), rep.diff_id);
        let manifest: serde_json::Value = serde_json::from_slice(&stored["/v2/app/manifests/1"]).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], blob.digest.as_str());
        assert_eq!(manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
        assert_eq!(sha256(&stored["/v2/app/manifests/1"]), first.manifest_digest);
    }
    let chunks = srv.log.lock().unwrap().iter().filter(|r| r.method == "PATCH" && r.headers.contains_key("content-range")).count();
    assert!(chunks >= 1);
    let patches_before = srv.log.lock().unwrap().iter().filter(|r| r.method == "PATCH").count();
    let known = PushLayer { known: vec![KnownBlob { digest: blob.digest.clone(), repository: "app".into() }], ..layer };
    let second = client.push(&dest, &[known], &config, false, Compression::Gzip, Privilege::Rootless, &no_progress).unwrap();
    assert_eq!(second.layers[0].how, "exists");
    assert_eq!(second.manifest_digest, first.manifest_digest);
    assert_eq!(srv.log.lock().unwrap().iter().filter(|r| r.method == "PATCH").count(), patches_before, "a blob was sent again");
}

#[test]
fn a_partial_download_survives_a_failed_pull_and_the_next_pull_resumes_from_it() {
    let img = image();
    let layer = img.layer.clone();
    let half = layer.len() / 2;
    let healthy = Arc::new(Mutex::new(false));
    let h2 = healthy.clone();
    let srv = registry(
        &img,
        Arc::new(move |r: &Req| match (*h2.lock().unwrap(), r.headers.get("range")) {
            (false, _) => Resp::Cut { len: layer.len(), body: layer[..half].to_vec() },
            (true, Some(range)) => {
                let from: usize = range.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
                let cr = format!("bytes {from}-{}/{}", layer.len() - 1, layer.len());
                resp(206, &[("Content-Range", &cr)], layer[from..].to_vec())
            }
            (true, None) => resp(200, &[], layer.clone()),
        }),
    );
    let r = Reference::parse(&format!("127.0.0.1:{}/app:1", srv.port)).unwrap();
    let client = RegistryClient::new(RegistryConfig { retries: 1, ..test_config() }, None);
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("blob.part");
    let job = |n: &str| {
        let dest = dir.path().join(n);
        std::fs::create_dir(&dest).unwrap();
        let desc = Descriptor { media_type: String::new(), digest: sha256(&img.layer), size: img.layer.len() as u64, urls: vec![] };
        LayerPull { desc, dest, split: None, lower: vec![], partial: Some(partial.clone()) }
    };
    assert!(client.pull_layers(&r, &[job("a")], Privilege::Rootless, &no_progress).is_err());
    assert_eq!(std::fs::read(&partial).unwrap(), img.layer[..half], "the partial file holds what arrived");
    *healthy.lock().unwrap() = true;
    let reps = client.pull_layers(&r, &[job("b")], Privilege::Rootless, &no_progress).unwrap();
    assert_eq!(reps[0].diff_id, img.diff_id);
    assert!(!partial.exists(), "removed once the layer is in");
    let log = srv.log.lock().unwrap();
    assert_eq!(log.last().unwrap().headers.get("range"), Some(&format!("bytes={half}-")));
}
