//! The S3 stores of `scripts/stores/` speak S3, checked through curl's own SigV4 signing:
//! bucket, put, get, ranged get, a two-part multipart upload, ListObjectsV2 by prefix,
//! delete. On Swift, each object is also on three devices, and the replicator puts a lost
//! replica back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use speculum_testkit::{CmdOutput, S3Store, random_bytes, run_ok};

/// The text of the first `<tag>…</tag>` in `xml`.
fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

/// Every `<Key>` of a listing.
fn listed_keys(xml: &str) -> Vec<String> {
    xml.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
        .collect()
}

/// A header's value from `curl -D -` output.
fn header(out: &CmdOutput, name: &str) -> String {
    out.stdout
        .lines()
        .find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {name} header in {}", out.describe()))
}

/// GETs `path` (with extra curl args) into a file and returns the body and HTTP status.
fn get(store: &S3Store, path: &str, extra: &[&str], tmp: &Path) -> (Vec<u8>, String) {
    let file = tmp.join("got");
    let out = run_ok(
        store
            .curl("GET", path)
            .args(extra)
            .arg("-o")
            .arg(&file)
            .args(["-w", "%{http_code}"]),
    );
    (fs::read(&file).unwrap(), out.stdout)
}

fn put_file(store: &S3Store, path: &str, file: &Path) -> CmdOutput {
    run_ok(
        store
            .curl("PUT", path)
            .arg("-T")
            .arg(file)
            .args(["-D", "-", "-o", "/dev/null"]),
    )
}

fn speaks_s3(store: &S3Store) {
    let name = store.store();
    let tmp = tempfile::tempdir().unwrap();
    let bucket = store.fresh_bucket(&format!("{name}-roundtrip"));

    // Put and get back, byte-equal; a range of it.
    let small = random_bytes(300_000, 1);
    fs::write(tmp.path().join("small"), &small).unwrap();
    put_file(
        store,
        &format!("/{bucket}/dir/small"),
        &tmp.path().join("small"),
    );
    let (body, status) = get(store, &format!("/{bucket}/dir/small"), &[], tmp.path());
    assert_eq!(status, "200", "{name}: GET");
    assert!(body == small, "{name}: GET returned other bytes");
    let (body, status) = get(
        store,
        &format!("/{bucket}/dir/small"),
        &["-H", "Range: bytes=1000-1999"],
        tmp.path(),
    );
    assert_eq!(status, "206", "{name}: ranged GET");
    assert!(
        body == small[1000..2000],
        "{name}: ranged GET returned other bytes"
    );

    // A multipart upload of two parts (the first at the 5 MiB minimum), completed.
    let key = format!("/{bucket}/dir/multi");
    let parts = [random_bytes(5 << 20, 2), random_bytes(1_234_567, 3)];
    let init = run_ok(&mut store.curl("POST", &format!("{key}?uploads=")));
    let upload_id = xml_value(&init.stdout, "UploadId")
        .unwrap_or_else(|| panic!("{name}: no UploadId in {}", init.stdout))
        .to_owned();
    let mut complete = String::from("<CompleteMultipartUpload>");
    for (i, part) in parts.iter().enumerate() {
        let file = tmp.path().join(format!("part{}", i + 1));
        fs::write(&file, part).unwrap();
        let out = put_file(
            store,
            &format!("{key}?partNumber={}&uploadId={upload_id}", i + 1),
            &file,
        );
        complete += &format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            i + 1,
            header(&out, "ETag")
        );
    }
    complete += "</CompleteMultipartUpload>";
    let done = run_ok(
        store
            .curl("POST", &format!("{key}?uploadId={upload_id}"))
            .args(["-H", "Content-Type: application/xml", "--data-binary"])
            .arg(&complete),
    );
    assert!(
        done.stdout.contains("CompleteMultipartUploadResult"),
        "{name}: {}",
        done.stdout
    );
    let whole = parts.concat();
    let (body, _) = get(store, &key, &[], tmp.path());
    assert_eq!(body.len(), whole.len(), "{name}: multipart object size");
    assert!(body == whole, "{name}: multipart object has other bytes");
    // A range across the part boundary.
    let (from, to) = ((5 << 20) - 100, (5 << 20) + 99);
    let (body, status) = get(
        store,
        &key,
        &["-H", &format!("Range: bytes={from}-{to}")],
        tmp.path(),
    );
    assert_eq!(status, "206", "{name}: ranged GET across parts");
    assert!(body == whole[from..=to], "{name}: ranged GET across parts");

    // ListObjectsV2 by prefix.
    run_ok(
        store
            .curl("PUT", &format!("/{bucket}/other"))
            .args(["--data-binary", "x"]),
    );
    let list = run_ok(&mut store.curl("GET", &format!("/{bucket}?list-type=2&prefix=dir%2F")));
    assert_eq!(
        listed_keys(&list.stdout),
        ["dir/multi", "dir/small"],
        "{name}: {}",
        list.stdout
    );

    // Delete: the objects go, then the bucket.
    for k in ["dir/small", "dir/multi", "other"] {
        run_ok(&mut store.curl("DELETE", &format!("/{bucket}/{k}")));
    }
    let gone = run_ok(
        store
            .curl("GET", &format!("/{bucket}/dir/small"))
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .arg("--no-fail-with-body"),
    );
    assert_eq!(gone.stdout, "404", "{name}: GET after DELETE");
    let list = run_ok(&mut store.curl("GET", &format!("/{bucket}?list-type=2")));
    assert!(
        listed_keys(&list.stdout).is_empty(),
        "{name}: {}",
        list.stdout
    );
    run_ok(&mut store.curl("DELETE", &format!("/{bucket}")));
}

#[test]
fn swift_speaks_s3() {
    speaks_s3(S3Store::swift());
}

#[test]
fn ceph_speaks_s3() {
    speaks_s3(S3Store::ceph());
}

/// Every file under `dir` whose name ends in `.data` and whose bytes are `body`.
fn data_files_holding(dir: &Path, body: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "data")
                && fs::read(&path).is_ok_and(|b| b == body)
            {
                found.push(path);
            }
        }
    }
    found
}

/// Waits up to `timeout` until every device holds `body` in a `.data` file; returns the
/// files, one per device, or panics with what was found and the store's logs.
fn wait_for_replicas(store: &S3Store, body: &[u8], timeout: Duration) -> Vec<PathBuf> {
    let start = Instant::now();
    loop {
        let found: Vec<Vec<PathBuf>> = store
            .device_dirs()
            .iter()
            .map(|d| data_files_holding(&d.join("objects"), body))
            .collect();
        if found.iter().all(|f| f.len() == 1) {
            return found.into_iter().flatten().collect();
        }
        assert!(
            start.elapsed() < timeout,
            "the object is not on all three devices after {timeout:?}: {found:?}\n{}",
            store.log_tails()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn swift_keeps_three_replicas_and_repairs_a_lost_one() {
    let store = S3Store::swift();
    assert_eq!(store.device_dirs().len(), 3);
    let tmp = tempfile::tempdir().unwrap();
    let bucket = store.fresh_bucket("replicas");
    let body = random_bytes(100_000, u64::from(std::process::id()));
    fs::write(tmp.path().join("body"), &body).unwrap();
    put_file(store, &format!("/{bucket}/obj"), &tmp.path().join("body"));

    // The proxy writes all three replicas (it answers after two, the quorum).
    let files = wait_for_replicas(store, &body, Duration::from_secs(10));
    assert_eq!(files.len(), 3, "{files:?}");

    // Lose the first device's copy of the whole partition (…/objects/PART/SUFFIX/HASH/T.data):
    // the replicator (ssync, a pass every 5 s) of another device pushes it back.
    let partition = files[0].ancestors().nth(3).unwrap().to_path_buf();
    fs::remove_dir_all(&partition).unwrap();
    let restored = wait_for_replicas(store, &body, Duration::from_secs(90));
    assert!(
        restored.iter().any(|f| f.starts_with(&partition)),
        "{restored:?}"
    );

    let (got, _) = get(store, &format!("/{bucket}/obj"), &[], tmp.path());
    assert!(got == body);
    run_ok(&mut store.curl("DELETE", &format!("/{bucket}/obj")));
    run_ok(&mut store.curl("DELETE", &format!("/{bucket}")));
}
