//! The backend suite on the filesystem store.

use berth_storage::blob::fs::FsStore;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::new(dir.path()).unwrap());
    berth_storage::testsuite::run_all(store, 5 << 20).await;
}
