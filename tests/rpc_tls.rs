//! The TLS tunnel for ggml's RPC protocol (feature `rpc-tls`): bytes cross
//! TlsClient -> TlsServer -> upstream and back unchanged, large transfers in
//! both directions at once included; every peer that cannot prove itself (a
//! client certificate from another CA, no client certificate, an untrusted
//! server certificate, another pre-shared key, plain TCP) is refused before
//! the upstream server ever sees a connection, and the reason is logged.
//!
//! The upstream is a small TCP server in this file that XORs every byte with
//! 0x5A, so an echo proves the bytes went through it. No llama.cpp needed.

use llama_rs::rpc_tls::{TlsAuth, TlsClient, TlsServer};
use llama_rs::Error;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const XOR: u8 = 0x5A;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

// ---------------------------------------------------------------- upstream

/// The plain "RPC server": XORs every byte with [`XOR`] and sends it back;
/// half-closes when its peer does. Counts the connections it accepts.
struct Upstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind(any_port()).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let count = accepts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                buf[..n].iter_mut().for_each(|b| *b ^= XOR);
                                if stream.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
        });
        Upstream { addr, accepts }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- PKI

/// A CA, and PEM files of certificates it signs, in a temporary folder.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::Builder::new().prefix("rpc-tls-").tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        Ca { issuer, dir }
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf certificate for `names`, written as `<file>.crt` and `<file>.key`.
    fn leaf(&self, file: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (crt, key_path) =
            (self.dir.path().join(format!("{file}.crt")), self.dir.path().join(format!("{file}.key")));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (crt, key_path)
    }

    fn server_auth(&self, peer_ca: &Path) -> TlsAuth {
        let (crt, key) = self.leaf("server", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        TlsAuth::from_files(&crt, &key, peer_ca).unwrap()
    }

    fn client_auth(&self, peer_ca: &Path) -> TlsAuth {
        let (crt, key) = self.leaf("client", &["rpc-client"], ExtendedKeyUsagePurpose::ClientAuth);
        TlsAuth::from_files(&crt, &key, peer_ca).unwrap()
    }
}

/// One CA for both ends: the server and a client it accepts.
fn good_pair() -> (Ca, TlsAuth, TlsAuth) {
    let ca = Ca::new("rpc CA");
    let (server, client) = (ca.server_auth(&ca.ca_pem()), ca.client_auth(&ca.ca_pem()));
    (ca, server, client)
}

fn psk(len: usize) -> Vec<u8> {
    let mut secret = vec![0u8; len];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut secret).unwrap();
    secret
}

// ---------------------------------------------------------------- logs

/// Everything the tunnel logs, from every test of this binary.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Sink(&'static Mutex<Vec<u8>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Sink(logs))
            .init();
        logs
    })
}

/// Waits (up to 5 s) for a logged line that contains every one of `parts`.
fn assert_logged(parts: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
        if text.lines().any(|l| parts.iter().all(|p| l.contains(p))) {
            return;
        }
        assert!(Instant::now() < deadline, "no log line with {parts:?}; logs:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- helpers

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn xor(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b ^ XOR).collect()
}

/// A deterministic, non-repeating-looking byte stream.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Request/response round trips of small messages, then 1 MiB each way at
/// once, then a clean close: everything comes back exactly, XORed.
fn assert_served(endpoint: &str) {
    let mut s = connect(endpoint);
    let started = Instant::now();
    for i in 0..200u32 {
        let msg = format!("request {i}: {}", "x".repeat(i as usize % 37));
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, xor(msg.as_bytes()), "round trip {i}");
    }
    // 200 round trips through two tunnels: Nagle's algorithm with delayed ACKs
    // would cost ~40 ms each.
    assert!(started.elapsed() < Duration::from_secs(4), "200 round trips took {:?}", started.elapsed());

    let big = pattern(1 << 20, 7);
    let mut w = s.try_clone().unwrap();
    let sent = big.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap(); // EOF: the close went all the way through and back
    writer.join().unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == xor(&big), "1 MiB echo differs");
}

/// The tunnel closes the local connection without passing on a single byte.
fn assert_refused(mut s: TcpStream) {
    let _ = s.write_all(b"\x00hello, are you an RPC server?");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Ok(n) => panic!("a refused connection received {n} bytes: {:?}", &buf[..n]),
        Err(e) => panic!("the refused connection was not closed: {e}"),
    }
}

/// The refusal happened before the upstream was contacted (checked after a
/// moment, so that a late connection would be seen).
fn assert_no_upstream(up: &Upstream) {
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(up.accepts(), 0, "the upstream saw a connection from an unauthenticated peer");
}

// ---------------------------------------------------------------- tests

#[test]
fn certificates_serve_the_right_client() {
    logs();
    let up = Upstream::start();
    let (_ca, server_auth, client_auth) = good_pair();
    let server = TlsServer::bind(any_port(), up.addr, &server_auth).unwrap();
    let client = TlsClient::start(server.local_addr(), "localhost", &client_auth).unwrap();
    assert_eq!(client.endpoint(), client.local_addr().to_string());
    assert!(client.endpoint().starts_with("127.0.0.1:"));
    assert_served(&client.endpoint());
    // The server name may also be the IP address in the certificate.
    let by_ip = TlsClient::start(server.local_addr(), "127.0.0.1", &client_auth).unwrap();
    assert_served(&by_ip.endpoint());
    assert_eq!(up.accepts(), 2, "one upstream connection per tunnelled connection");
}

#[test]
fn large_transfers_both_ways_on_concurrent_tunnels() {
    logs();
    const LEN: usize = 48 << 20;
    let up = Upstream::start();
    let (_ca, server_auth, client_auth) = good_pair();
    let server = TlsServer::bind(any_port(), up.addr, &server_auth).unwrap();
    let client = TlsClient::start(server.local_addr(), "localhost", &client_auth).unwrap();
    let workers: Vec<_> = (0..2u64)
        .map(|seed| {
            let endpoint = client.endpoint();
            std::thread::spawn(move || {
                let data = Arc::new(pattern(LEN, seed + 100));
                let mut s = connect(&endpoint);
                let (mut w, sent) = (s.try_clone().unwrap(), data.clone());
                let writer = std::thread::spawn(move || {
                    for chunk in sent.chunks(1_000_003) {
                        w.write_all(chunk).unwrap();
                    }
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let (mut got, mut buf) = (0usize, vec![0u8; 256 * 1024]);
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    assert!(got + n <= LEN, "more bytes came back than were sent");
                    buf[..n].iter_mut().for_each(|b| *b ^= XOR);
                    assert!(buf[..n] == data[got..got + n], "connection {seed} differs in bytes {got}..{}", got + n);
                    got += n;
                }
                writer.join().unwrap();
                assert_eq!(got, LEN, "connection {seed} came back short");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(up.accepts(), 2);
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    logs();
    let up = Upstream::start();
    let ca = Ca::new("rpc CA");
    let rogue = Ca::new("rogue CA");
    let server = TlsServer::bind(any_port(), up.addr, &ca.server_auth(&ca.ca_pem())).unwrap();
    // The rogue client trusts the real server, but its own certificate comes from another CA.
    let client = TlsClient::start(server.local_addr(), "localhost", &rogue.client_auth(&ca.ca_pem())).unwrap();
    assert_refused(connect(&client.endpoint()));
    assert_no_upstream(&up);
    let port = format!(":{}", server.local_addr().port());
    assert_logged(&["rpc-tls server", &port, "refused", "certificate not signed by the trusted CA"]);

    // The accept loop goes on: a good client is still served.
    let good = TlsClient::start(server.local_addr(), "localhost", &ca.client_auth(&ca.ca_pem())).unwrap();
    assert_served(&good.endpoint());
    assert_eq!(up.accepts(), 1);
}

#[test]
fn client_without_certificate_is_refused() {
    logs();
    let up = Upstream::start();
    let ca = Ca::new("rpc CA");
    let server = TlsServer::bind(any_port(), up.addr, &ca.server_auth(&ca.ca_pem())).unwrap();

    // A raw rustls client that trusts the server but has no certificate.
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = rustls::pki_types::CertificateDer::from(ca.issuer.der().to_vec());
    roots.add(ca_der).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = connect(&server.local_addr().to_string());
    let me = sock.local_addr().unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    // TLS 1.3: the client finishes its side of the handshake before the
    // server judges it, so the refusal shows on the first read.
    let _ = tls.write_all(b"hello");
    let mut buf = [0u8; 16];
    match tls.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("a client without a certificate received {n} bytes"),
    }
    assert_no_upstream(&up);
    assert_logged(&["refused", &me.to_string(), "presented no certificate"]);
}

#[test]
fn untrusted_server_certificate_is_refused() {
    logs();
    let up = Upstream::start();
    let ca = Ca::new("rpc CA");
    let rogue = Ca::new("rogue CA");
    // The server trusts the client, but its own certificate comes from a CA the client does not trust.
    let server = TlsServer::bind(any_port(), up.addr, &rogue.server_auth(&ca.ca_pem())).unwrap();
    let client = TlsClient::start(server.local_addr(), "localhost", &ca.client_auth(&ca.ca_pem())).unwrap();
    assert_refused(connect(&client.endpoint()));
    assert_no_upstream(&up);
    let remote = server.local_addr().to_string();
    assert_logged(&["rpc-tls client to", &remote, "TLS handshake failed", "certificate not signed by the trusted CA"]);

    // A trusted certificate for another name is refused too.
    let (_, good_server, good_client) = {
        let (ca, s, c) = good_pair();
        (ca.dir, s, c)
    };
    let server = TlsServer::bind(any_port(), up.addr, &good_server).unwrap();
    let client = TlsClient::start(server.local_addr(), "gpu-box.example", &good_client).unwrap();
    assert_refused(connect(&client.endpoint()));
    assert_no_upstream(&up);
    assert_logged(&["rpc-tls client to", &server.local_addr().to_string(), "not valid for the server name"]);
}

#[test]
fn pre_shared_key() {
    logs();
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rpc.psk");
    std::fs::write(&file, psk(32)).unwrap();
    let auth = TlsAuth::psk_from_file(&file).unwrap();
    assert!(!format!("{auth:?}").contains(&format!("{:?}", std::fs::read(&file).unwrap())), "Debug shows the key");

    // The same secret on both ends is served (the server name is ignored).
    let server = TlsServer::bind(any_port(), up.addr, &auth).unwrap();
    let client = TlsClient::start(server.local_addr(), "ignored in PSK mode", &auth).unwrap();
    assert_served(&client.endpoint());
    assert_eq!(up.accepts(), 1);

    // Another secret is refused, and the upstream sees nothing more.
    let other = TlsAuth::PreSharedKey(psk(64));
    let intruder = TlsClient::start(server.local_addr(), "x", &other).unwrap();
    assert_refused(connect(&intruder.endpoint()));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(up.accepts(), 1, "a client without the secret reached the upstream");
    assert_logged(&["rpc-tls client to", &server.local_addr().to_string(), "not derived from our pre-shared key"]);
    // Certificates against a PSK server: refused as well.
    let (_ca, _, cert_client) = good_pair();
    let wrong_kind = TlsClient::start(server.local_addr(), "localhost", &cert_client).unwrap();
    assert_refused(connect(&wrong_kind.endpoint()));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(up.accepts(), 1);

    // A secret shorter than 32 bytes is an error at construction, everywhere.
    let short = dir.path().join("short.psk");
    std::fs::write(&short, psk(31)).unwrap();
    let addr = any_port();
    for err in [
        TlsAuth::psk_from_file(&short).unwrap_err(),
        TlsServer::bind(addr, up.addr, &TlsAuth::PreSharedKey(vec![7; 16])).unwrap_err(),
        TlsClient::start(server.local_addr(), "x", &TlsAuth::PreSharedKey(Vec::new())).unwrap_err(),
    ] {
        match err {
            Error::Rpc { message, .. } => {
                assert!(message.contains("at least 32"), "{message}");
                assert!(message.contains("/dev/urandom"), "no hint how to make one: {message}");
            }
            e => panic!("expected Error::Rpc, got {e:?}"),
        }
    }
}

#[test]
fn plain_tcp_client_gets_nothing() {
    logs();
    let up = Upstream::start();
    let (_ca, server_auth, _) = good_pair();
    let server = TlsServer::bind(any_port(), up.addr, &server_auth).unwrap();
    let mut s = connect(&server.local_addr().to_string());
    let me = s.local_addr().unwrap().to_string();
    s.write_all(b"\x00hello, are you an RPC server?").unwrap();
    // All it may get back is the server's TLS alert (a record of type 21), then the close.
    let mut back = Vec::new();
    if let Err(e) = s.read_to_end(&mut back) {
        assert!(matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe), "not closed: {e}");
    }
    assert!(back.is_empty() || (back.len() == 7 && back[..3] == [21, 3, 3]), "got {back:?}");
    assert_no_upstream(&up);
    assert_logged(&["refused", &me, "does not speak TLS"]);
}

#[test]
fn unreachable_upstream_closes_the_connection() {
    logs();
    let gone = TcpListener::bind(any_port()).unwrap().local_addr().unwrap(); // closed again at once
    let (_ca, server_auth, client_auth) = good_pair();
    let server = TlsServer::bind(any_port(), gone, &server_auth).unwrap();
    let client = TlsClient::start(server.local_addr(), "localhost", &client_auth).unwrap();
    assert_refused(connect(&client.endpoint()));
    assert_logged(&["rpc-tls server", &format!(":{}", server.local_addr().port()), "cannot reach the RPC server"]);
}

#[test]
fn unusable_credentials_are_errors_at_construction() {
    let up = Upstream::start();
    let (ca, server_auth, _) = good_pair();
    let TlsAuth::Certificates { cert_chain_pem, key_pem, peer_ca_pem } = server_auth else { unreachable!() };
    let listen: SocketAddr = "127.0.0.1:1".parse().unwrap(); // never bound: construction fails first
    let bind = |cert: &[u8], key: &[u8], ca: &[u8]| {
        let auth =
            TlsAuth::Certificates { cert_chain_pem: cert.to_vec(), key_pem: key.to_vec(), peer_ca_pem: ca.to_vec() };
        match TlsServer::bind(listen, up.addr, &auth).unwrap_err() {
            Error::Rpc { endpoint, message } => {
                assert_eq!(endpoint, listen.to_string());
                message
            }
            e => panic!("expected Error::Rpc, got {e:?}"),
        }
    };
    assert!(bind(b"not pem", &key_pem, &peer_ca_pem).contains("no `BEGIN CERTIFICATE`"));
    assert!(bind(&cert_chain_pem, &cert_chain_pem, &peer_ca_pem).contains("no private key"));
    assert!(bind(&cert_chain_pem, &key_pem, b"").contains("peer CA file"));
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    assert!(bind(&cert_chain_pem, other_key.as_bytes(), &peer_ca_pem).contains("do not fit together"));

    // The client checks the same, with the remote as the endpoint.
    let remote: SocketAddr = "192.0.2.1:50052".parse().unwrap();
    let auth = TlsAuth::Certificates { cert_chain_pem: b"junk".to_vec(), key_pem, peer_ca_pem };
    match TlsClient::start(remote, "localhost", &auth).unwrap_err() {
        Error::Rpc { endpoint, message } => {
            assert_eq!(endpoint, remote.to_string());
            assert!(message.contains("certificate"), "{message}");
        }
        e => panic!("expected Error::Rpc, got {e:?}"),
    }
    // Unreadable files are I/O errors naming the file.
    let missing = ca.dir.path().join("missing.pem");
    match TlsAuth::from_files(&missing, &missing, &missing).unwrap_err() {
        Error::Io { path, .. } => assert_eq!(path, missing),
        e => panic!("expected Error::Io, got {e:?}"),
    }
}

#[test]
fn dropping_the_server_closes_live_tunnels() {
    logs();
    let up = Upstream::start();
    let (_ca, server_auth, client_auth) = good_pair();
    let server = TlsServer::bind(any_port(), up.addr, &server_auth).unwrap();
    let addr = server.local_addr();
    let client = TlsClient::start(addr, "localhost", &client_auth).unwrap();
    let mut s = connect(&client.endpoint());
    s.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back.to_vec(), xor(b"ping"));

    let started = Instant::now();
    drop(server);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest); // EOF or reset, not the 30 s timeout
    assert!(rest.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5), "the tunnel stayed open {:?}", started.elapsed());
    // Nothing listens there any more.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "still accepting after drop");
}
