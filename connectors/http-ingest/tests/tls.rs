//! The publish endpoint over HTTPS: publishes acknowledged, plain HTTP and untrusted clients
//! refused, certificates rotated without a restart, slow handshakes delaying no one, and bad
//! certificate files refused at start. The certificates in `tests/fixtures/tls` are
//! self-signed test certificates for 127.0.0.1, made with openssl; nothing else trusts them.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{config, publish_body, read, start, text, token};
use serde_json::json;
use sluice_connector_http_ingest::{HttpIngestSource, IngestError, TlsError, TlsFiles};
use sluice_runtime::source::Position;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// A client that trusts only the certificate `cert-{which}.pem`, on connections of its own.
fn trusting(which: &str) -> reqwest::Client {
    let pem = std::fs::read(fixture(&format!("cert-{which}.pem"))).expect("the test certificate");
    let cert = reqwest::Certificate::from_pem(&pem).expect("a PEM certificate");
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .timeout(Duration::from_secs(20))
        .build()
        .expect("a client")
}

/// Publishes one event to `url` (`https://…/publish`) with a valid token.
async fn publish_to(client: &reqwest::Client, url: &str, n: u64) -> Result<u16, reqwest::Error> {
    let body = publish_body("orders", &json!({"n": n}));
    let response = client
        .post(url)
        .header("Authorization", format!("Bearer {}", token()))
        .body(body)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

fn started_with(dir: &Path, files: TlsFiles) -> HttpIngestSource {
    let mut config = config(dir);
    config.tls = Some(files);
    start(config)
}

#[tokio::test]
async fn https_publishes_are_acknowledged_and_plain_http_or_untrusted_clients_get_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = started_with(dir.path(), TlsFiles::new(fixture("cert-a.pem"), fixture("key-a.pem")));
    let addr = source.local_addr();
    let url = format!("https://127.0.0.1:{}/publish", addr.port());

    assert_eq!(publish_to(&trusting("a"), &url, 1).await.ok(), Some(200));
    // HTTP/2 is chosen by ALPN when the client offers it (reqwest does over TLS).
    let response = trusting("a")
        .post(&url)
        .header("Authorization", format!("Bearer {}", token()))
        .body(publish_body("orders", &json!({"n": 2})))
        .send()
        .await
        .expect("an answer");
    assert_eq!(
        (response.status().as_u16(), response.version()),
        (200, reqwest::Version::HTTP_2)
    );

    // Plain HTTP to the HTTPS port: the handshake fails, no answer, nothing accepted.
    let plain = reqwest::Client::new()
        .post(format!("http://{addr}/publish"))
        .header("Authorization", format!("Bearer {}", token()))
        .body(publish_body("orders", &json!({"n": 3})))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    // A client that does not trust the certificate refuses to send.
    let untrusted = publish_to(&trusting("b"), &url, 4).await;
    assert!(
        untrusted.is_err(),
        "an untrusted certificate was accepted: {untrusted:?}"
    );

    let lines: Vec<String> = read(&source, "p0", &Position::Start).iter().map(text).collect();
    assert_eq!(
        lines,
        [
            r#"{"topic":"orders","data":{"n":1}}"#,
            r#"{"topic":"orders","data":{"n":2}}"#
        ]
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_served_after_the_next_check_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    let install = |which: &str| {
        std::fs::copy(fixture(&format!("cert-{which}.pem")), &cert).expect("copy the certificate");
        std::fs::copy(fixture(&format!("key-{which}.pem")), &key).expect("copy the key");
    };
    install("a");
    let files = TlsFiles {
        reload_every: Duration::from_millis(100),
        ..TlsFiles::new(&cert, &key)
    };
    let source = started_with(dir.path(), files);
    let url = format!("https://127.0.0.1:{}/publish", source.local_addr().port());
    assert_eq!(publish_to(&trusting("a"), &url, 1).await.ok(), Some(200));

    // Rotation: new handshakes get the new certificate once the files are checked again.
    // Modification times may be a coarse clock's: each step sets them later still.
    let mut later = std::time::SystemTime::now();
    let mut touch = |paths: &[&PathBuf]| {
        later += Duration::from_secs(2);
        for path in paths {
            std::fs::File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(later))
                .expect("touch");
        }
    };
    install("b");
    touch(&[&cert, &key]);
    served_to(&trusting("b"), &url).await;
    assert!(
        publish_to(&trusting("a"), &url, 3).await.is_err(),
        "the old certificate is still served"
    );

    // A rotation caught half-way (a key that does not match): the previous pair stays.
    std::fs::copy(fixture("key-a.pem"), &key).expect("copy the key");
    touch(&[&key]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(publish_to(&trusting("b"), &url, 4).await.ok(), Some(200));

    // Finished: the checks went on, and the completed pair is served.
    install("a");
    touch(&[&cert, &key]);
    served_to(&trusting("a"), &url).await;
    assert!(publish_to(&trusting("b"), &url, 6).await.is_err());

    let lines = read(&source, "p0", &Position::Start).len();
    assert!(lines >= 4, "{lines}");
}

/// Publishes with `client` until it succeeds: the certificate it trusts is served.
async fn served_to(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while publish_to(client, url, 0).await.ok() != Some(200) {
        assert!(Instant::now() < deadline, "the rotated certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_more_than_its_share_of_handshakes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = started_with(dir.path(), TlsFiles::new(fixture("cert-a.pem"), fixture("key-a.pem")));
    let addr = source.local_addr();
    // Sixteen connections from 127.0.0.1 that never handshake take this address's share.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        stalled.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next one is closed at once instead of waiting its turn.
    let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut extra, &mut byte),
    )
    .await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // Once they go, the address is served again.
    drop(stalled);
    let url = format!("https://127.0.0.1:{}/publish", addr.port());
    served_to(&trusting("a"), &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_delays_no_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = started_with(dir.path(), TlsFiles::new(fixture("cert-a.pem"), fixture("key-a.pem")));
    let addr = source.local_addr();
    // Connected, sending nothing: the server waits up to its handshake timeout for it.
    let stalled: Vec<tokio::net::TcpStream> = {
        let mut streams = Vec::new();
        for _ in 0..3 {
            streams.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        streams
    };
    let started = Instant::now();
    let url = format!("https://127.0.0.1:{}/publish", addr.port());
    assert_eq!(publish_to(&trusting("a"), &url, 1).await.ok(), Some(200));
    // Well inside the 10 s the stalled handshakes may take: they did not hold this one back.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    drop(stalled);
}

#[test]
fn bad_certificate_files_are_start_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start_with = |cert: PathBuf, key: PathBuf| {
        let mut config = config(dir.path());
        config.tls = Some(TlsFiles::new(&cert, key));
        match HttpIngestSource::start(config) {
            Err(IngestError::Tls(TlsError::File { key, path, reason })) => {
                // The error names the pipeline key of the file it is about.
                assert_eq!(key, if path == cert { "cert" } else { "key" }, "{path:?}");
                (path, reason)
            }
            Err(other) => panic!("expected a TLS error, got {other}"),
            Ok(_) => panic!("started with bad TLS files"),
        }
    };

    // A key that is not the certificate's.
    let (path, reason) = start_with(fixture("cert-a.pem"), fixture("key-b.pem"));
    assert_eq!(path, fixture("cert-a.pem"));
    assert!(reason.contains("cannot be used"), "{reason}");

    // A missing key file.
    let missing = dir.path().join("missing.key");
    let (path, reason) = start_with(fixture("cert-a.pem"), missing.clone());
    assert_eq!(path, missing);
    assert!(reason.contains("No such file"), "{reason}");

    // A certificate file holding only a key.
    let (path, reason) = start_with(fixture("key-a.pem"), fixture("key-a.pem"));
    assert_eq!(path, fixture("key-a.pem"));
    assert!(reason.contains("no CERTIFICATE"), "{reason}");

    // A certificate block that is not a certificate: blamed on the certificate, not the key.
    let corrupt = dir.path().join("corrupt.pem");
    std::fs::write(
        &corrupt,
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let (path, reason) = start_with(corrupt.clone(), fixture("key-a.pem"));
    assert_eq!(path, corrupt);
    assert!(reason.contains("cannot be used"), "{reason}");

    // The directory lock was not taken by the failed starts: a good start works.
    let mut good = config(dir.path());
    good.tls = Some(TlsFiles::new(fixture("cert-a.pem"), fixture("key-a.pem")));
    drop(start(good));
}
