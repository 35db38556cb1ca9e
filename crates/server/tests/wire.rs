//! What reaches a client on the wire, through hyper on a real listener: error
//! bodies on 413 and 414, and a 413 that arrives even when the client writes
//! the whole body before reading (issue 9, point 4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use speculum_oci::media_type;
use speculum_server::{AppState, AuthPolicy, Server, router};
use speculum_storage::Registry;

async fn start() -> Server {
    let app = router(AppState::new(Registry::memory(), AuthPolicy::open()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::start(listener, app, None).unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// An answer as read off the socket.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The spec error code of the body, which must be an error body.
    fn code(&self) -> String {
        let json: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        });
        json["errors"][0]["code"].as_str().unwrap().to_string()
    }
}

/// Read one answer (head, then a body of its `Content-Length`).
fn read_answer(stream: &mut TcpStream) -> io::Result<Answer> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"));
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A manifest-shaped body of `size` bytes, over the 4 MiB limit when `size` is.
fn big_manifest(size: usize) -> Vec<u8> {
    let mut body = b"{\"schemaVersion\":2,\"pad\":\"".to_vec();
    body.resize(size - 2, b'a');
    body.extend_from_slice(b"\"}");
    body
}

/// Write the whole request first, then read: what many HTTP/1.1 clients do.
fn send_all_then_read(addr: SocketAddr, head: String, body: &[u8]) -> io::Result<Answer> {
    let mut stream = connect(addr);
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    read_answer(&mut stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_manifest_413_reaches_a_client_that_writes_everything_first() {
    let server = start().await;
    let addr = server.local_addr();
    tokio::task::spawn_blocking(move || {
        let body = big_manifest(5 * 1024 * 1024);
        // With a declared length: refused before reading, then drained.
        let head = format!(
            "PUT /v2/big/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\n\
             Content-Length: {}\r\n\r\n",
            media_type::OCI_MANIFEST,
            body.len()
        );
        let answer = send_all_then_read(addr, head, &body).expect("the 413 is read, not reset");
        assert_eq!(answer.status, 413);
        assert_eq!(answer.code(), "SIZE_INVALID");
        assert_eq!(answer.header("content-type"), Some("application/json"));

        // Chunked, no length: refused once the limit is crossed, then drained.
        let mut chunked = Vec::new();
        for chunk in body.chunks(64 * 1024) {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let head = format!(
            "PUT /v2/big/manifests/v2 HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            media_type::OCI_MANIFEST
        );
        let mut stream = connect(addr);
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&chunked).unwrap();
        let answer = read_answer(&mut stream).expect("the 413 is read, not reset");
        assert_eq!(answer.status, 413);
        assert_eq!(answer.code(), "SIZE_INVALID");
        // The whole body was read, so the connection stays usable.
        stream
            .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_answer(&mut stream).unwrap().status, 200);
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_urls_get_414_with_an_error_body() {
    let server = start().await;
    let addr = server.local_addr();
    tokio::task::spawn_blocking(move || {
        // Over the registry's limit: its own 414, with a spec error body.
        let name = "a".repeat(9 * 1024);
        let mut stream = connect(addr);
        write!(
            stream,
            "GET /v2/{name}/tags/list HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let answer = read_answer(&mut stream).unwrap();
        assert_eq!(answer.status, 414);
        assert_eq!(answer.code(), "UNSUPPORTED");
        // Just under it: an ordinary answer (the name is too long for the
        // grammar).
        let name = "a".repeat(7 * 1024);
        write!(
            stream,
            "GET /v2/{name}/tags/list HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let answer = read_answer(&mut stream).unwrap();
        assert_eq!(answer.status, 400);
        assert_eq!(answer.code(), "NAME_INVALID");
        // Over hyper's own URL limit (64 KiB): never hyper's empty 414 (the
        // head is refused as too large first, 431, if the answer arrives).
        for size in [70 * 1024, 200 * 1024] {
            let name = "a".repeat(size);
            let mut stream = connect(addr);
            let sent = write!(
                stream,
                "GET /v2/{name}/tags/list HTTP/1.1\r\nHost: x\r\n\r\n"
            );
            if let (Ok(()), Ok(answer)) = (sent, read_answer(&mut stream)) {
                assert_ne!(answer.status, 200, "{size}");
                if answer.status == 414 {
                    assert_eq!(answer.code(), "UNSUPPORTED", "{size}");
                }
            }
        }
    })
    .await
    .unwrap();
    server.shutdown().await;
}
