//! One conformance suite for every [`BlobStore`] backend (distribution's `testsuites.Driver`
//! idea): each backend's test file calls [`run_all`] with a fresh store.

use crate::blob::{BlobRef, BlobStore, ByteRange, ByteStream};
use berth_oci::{Algorithm, Digest, Hasher};
use bytes::Bytes;
use futures::StreamExt;
use std::io;
use std::sync::Arc;
use uuid::Uuid;

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn stream_of(chunks: Vec<Vec<u8>>) -> ByteStream {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))).boxed()
}

async fn collect(s: &dyn BlobStore, b: &BlobRef, r: Option<ByteRange>) -> Vec<u8> {
    let body = s.read(b, r).await.expect("read");
    let mut out = Vec::new();
    let mut st = body.stream;
    while let Some(c) = st.next().await {
        out.extend_from_slice(&c.expect("chunk"));
    }
    assert_eq!(
        out.len() as u64,
        body.len,
        "declared length matches the bytes"
    );
    out
}

/// Uploads `bytes` in chunks of `chunk` bytes over `patches` appends; returns the blob.
pub async fn upload(s: &dyn BlobStore, bytes: &[u8], chunk: usize, patches: usize) -> BlobRef {
    let id = Uuid::new_v4();
    s.begin(id).await.expect("begin");
    let mut h = Hasher::new(Algorithm::Sha256);
    let per_patch = bytes.len().div_ceil(patches.max(1)).max(1);
    let mut off = 0usize;
    for piece in bytes.chunks(per_patch) {
        let chunks: Vec<Vec<u8>> = piece.chunks(chunk.max(1)).map(|c| c.to_vec()).collect();
        let n = s
            .append(id, off as u64, stream_of(chunks), &mut h)
            .await
            .expect("append");
        off += piece.len();
        assert_eq!(n, off as u64);
        assert_eq!(s.upload_len(id).await.expect("len"), Some(off as u64));
    }
    let d = h.finish();
    assert_eq!(d, Digest::sha256(bytes));
    let location = s.commit(id, &d).await.expect("commit");
    BlobRef {
        digest: d,
        location,
    }
}

/// Round trip of several sizes, with ranged reads.
pub async fn round_trips(s: &dyn BlobStore) {
    for (len, chunk, patches) in [
        (0usize, 1usize, 1usize),
        (1, 1, 1),
        (4097, 1000, 3),
        (300_001, 65_536, 2),
    ] {
        let bytes = data(len, len as u64 + 7);
        let b = upload(s, &bytes, chunk, patches).await;
        assert_eq!(s.stat(&b).await.expect("stat"), Some(len as u64));
        assert_eq!(collect(s, &b, None).await, bytes);
        if len > 10 {
            let r = ByteRange {
                start: 3,
                end: len as u64 - 2,
            };
            assert_eq!(collect(s, &b, Some(r)).await, &bytes[3..len - 2]);
            let tail = ByteRange {
                start: len as u64 - 1,
                end: len as u64,
            };
            assert_eq!(collect(s, &b, Some(tail)).await, &bytes[len - 1..]);
        }
    }
}

/// Odd chunk sizes around a part boundary (`part` bytes), over many appends.
pub async fn odd_chunks(s: &dyn BlobStore, part: usize) {
    let bytes = data(part * 2 + 12_345, 99);
    let b = upload(s, &bytes, 7_777, 5).await;
    assert_eq!(collect(s, &b, None).await, bytes);
    let r = ByteRange {
        start: part as u64 - 10,
        end: part as u64 + 10,
    };
    assert_eq!(collect(s, &b, Some(r)).await, &bytes[part - 10..part + 10]);
}

/// A failed append changes nothing; abort removes the upload.
pub async fn failures_and_abort(s: &dyn BlobStore) {
    let id = Uuid::new_v4();
    s.begin(id).await.expect("begin");
    let mut h = Hasher::new(Algorithm::Sha256);
    s.append(id, 0, stream_of(vec![data(1000, 1)]), &mut h)
        .await
        .expect("append");
    let broken: ByteStream = futures::stream::iter(vec![
        Ok(Bytes::from(data(5000, 2))),
        Err(io::Error::other("connection dropped")),
    ])
    .boxed();
    let mut h2 = h.clone();
    let e = s
        .append(id, 1000, broken, &mut h2)
        .await
        .expect_err("broken body fails");
    assert!(
        matches!(e, crate::Error::Body(_)),
        "a body error is reported as such: {e}"
    );
    assert_eq!(s.upload_len(id).await.expect("len"), Some(1000));
    let e = s
        .append(id, 5, stream_of(vec![vec![1]]), &mut h.clone())
        .await
        .expect_err("wrong offset");
    assert!(!e.to_string().is_empty());
    s.abort(id).await.expect("abort");
    assert_eq!(s.upload_len(id).await.expect("len"), None);
    s.abort(id).await.expect("abort twice is fine");
    let missing = BlobRef::at_digest(&Digest::sha256(b"never stored"));
    assert!(matches!(
        s.read(&missing, None).await,
        Err(crate::Error::NotFound)
    ));
    assert_eq!(s.stat(&missing).await.expect("stat"), None);
}

/// Concurrent uploads of the same bytes all commit and the blob reads back whole.
pub async fn concurrent_same_digest(s: Arc<dyn BlobStore>, len: usize) {
    let bytes = Arc::new(data(len, 4242));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let s = s.clone();
        let b = bytes.clone();
        tasks.push(tokio::spawn(async move {
            upload(s.as_ref(), &b, 10_000 + i * 333, 2).await
        }));
    }
    for t in tasks {
        let blob = t.await.expect("task");
        assert_eq!(collect(s.as_ref(), &blob, None).await, *bytes);
    }
}

/// A big blob sent in small chunks stays correct (memory is the backend's own promise).
pub async fn big_blob(s: &dyn BlobStore, len: usize) {
    let bytes = data(len, 64);
    let b = upload(s, &bytes, 64 * 1024, 8).await;
    assert_eq!(s.stat(&b).await.expect("stat"), Some(len as u64));
    let got = collect(s, &b, None).await;
    assert!(got == bytes, "64 MiB round trip");
    s.delete(&b).await.expect("delete");
    assert_eq!(s.stat(&b).await.expect("stat"), None);
}

/// The orphan pass's listing: every committed blob, small (at its digest) and multipart (at
/// a location of its own), with its size and a recent modification time; no upload in
/// progress; and `delete_objects` removes what it is given.
pub async fn lists_blobs(s: &dyn BlobStore, part: usize) {
    let before = crate::now_secs() - 1;
    let small = upload(s, &data(100, 41), 10, 2).await;
    let large = upload(s, &data(part * 2 + 7, 42), part, 3).await;
    let pending = Uuid::new_v4();
    s.begin(pending).await.expect("begin");
    let mut h = Hasher::new(Algorithm::Sha256);
    s.append(pending, 0, stream_of(vec![data(part + 1, 43)]), &mut h)
        .await
        .expect("append");
    let listed = s.list_blobs().await.expect("list");
    let find = |b: &BlobRef| {
        listed
            .iter()
            .find(|o| match &b.location {
                Some(l) => o.location.as_ref() == Some(l),
                None => o.location.is_none() && o.digest.as_ref() == Some(&b.digest),
            })
            .cloned()
    };
    for (b, len) in [(&small, 100), (&large, part * 2 + 7)] {
        let o = find(b).unwrap_or_else(|| panic!("{b:?} not listed in {listed:?}"));
        assert_eq!(o.size, len as u64, "{b:?}");
        assert!(
            o.modified >= before,
            "{b:?} modified {} < {before}",
            o.modified
        );
    }
    assert!(
        listed.iter().all(|o| o
            .location
            .as_deref()
            .is_none_or(|l| !l.contains(&pending.to_string()))),
        "an upload in progress was listed as a blob: {listed:?}"
    );
    let objs: Vec<_> = [&small, &large].iter().filter_map(|b| find(b)).collect();
    s.delete_objects(&objs).await.expect("delete");
    assert_eq!(s.stat(&small).await.expect("stat"), None);
    assert_eq!(s.stat(&large).await.expect("stat"), None);
    let after = s.list_blobs().await.expect("list");
    assert!(
        after.iter().all(|o| !objs.contains(o)),
        "deleted objects still listed: {after:?}"
    );
    s.abort(pending).await.expect("abort");
}

/// Everything.
pub async fn run_all(s: Arc<dyn BlobStore>, part: usize) {
    lists_blobs(s.as_ref(), part).await;
    round_trips(s.as_ref()).await;
    odd_chunks(s.as_ref(), part).await;
    failures_and_abort(s.as_ref()).await;
    concurrent_same_digest(s.clone(), part + 1234).await;
    big_blob(s.as_ref(), 64 << 20).await;
}
