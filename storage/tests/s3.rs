//! The backend suite on the S3 store, against a real S3-protocol server: tests/run-all.sh
//! starts one (moto) and sets BERTH_TEST_S3_ENDPOINT. Without it this test fails, so CI can
//! never pass by skipping it.

use berth_storage::blob::s3::{S3Settings, S3Store};
use berth_storage::blob::{BlobRef, BlobStore};
use std::sync::Arc;

fn settings(bucket: &str) -> S3Settings {
    let endpoint = std::env::var("BERTH_TEST_S3_ENDPOINT")
        .expect("BERTH_TEST_S3_ENDPOINT must name an S3 server (tests/run-all.sh starts moto)");
    S3Settings {
        bucket: bucket.into(),
        prefix: "suite".into(),
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint),
        force_path_style: true,
        part_size: 5 << 20,
        redirect: true,
        presign_ttl_secs: 60,
        create_bucket: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_passes_the_suite() {
    let store = Arc::new(S3Store::connect(settings("berth-suite")).await.unwrap());
    berth_storage::testsuite::run_all(store.clone(), 5 << 20).await;
    // Redirects: a presigned URL for a stored blob.
    let b = berth_storage::testsuite::upload(store.as_ref(), b"presign me", 4, 1).await;
    let url = store
        .redirect_url(&b)
        .await
        .unwrap()
        .expect("a presigned URL");
    assert!(url.contains("X-Amz-Signature"), "{url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_are_clear() {
    let mut s = settings("berth-no-such-bucket");
    s.create_bucket = false;
    let store = S3Store::connect(s).await.unwrap();
    let missing = BlobRef::at_digest(&berth_oci::Digest::sha256(b"x"));
    let e = store.read(&missing, None).await.err().expect("an error");
    let msg = e.to_string();
    assert!(
        msg.contains("S3 GetObject") && msg.contains("NoSuchBucket"),
        "{msg}"
    );
    let mut s = settings("berth-suite");
    s.part_size = 1 << 20;
    assert!(
        S3Store::connect(s).await.is_err(),
        "parts under 5 MiB are refused"
    );
}
