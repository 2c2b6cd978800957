//! The verification job queue on SQLite: enqueue, claim with leases, expiry, retries and
//! idempotent completion.

use berth_oci::platform::{Isolation, Platform};
use berth_oci::worker_protocol::JobState;
use berth_storage::meta::{ClaimFilter, Finish, Finished, Meta, NewJob};

fn job(digest: &str, isolation: Isolation, host_build: Option<&str>) -> NewJob {
    NewJob {
        repository: "team/app".into(),
        digest: digest.into(),
        index_digest: None,
        platform: Platform::new("windows", "amd64").with_os_version("10.0.20348.1"),
        isolation,
        host_build: host_build.map(str::to_owned),
        policy: "p".into(),
        probe: None,
        timeout_secs: 30,
        max_attempts: 2,
        state: JobState::Queued,
        message: String::new(),
    }
}

fn filter(build: &str, isolation: Vec<Isolation>) -> ClaimFilter {
    ClaimFilter {
        os: "windows".into(),
        architecture: "amd64".into(),
        isolation,
        host_build: Some(build.into()),
    }
}

fn finish(state: JobState) -> Finish<'static> {
    Finish {
        state,
        exit_code: Some(0),
        message: "ok",
        log_tail: "tail",
        timings: "{}",
        runner: "hcs",
        host: "{}",
        simulated: false,
    }
}

async fn open() -> (tempfile::TempDir, Meta) {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = Meta::open_sqlite(&dir.path().join("meta.db"))
        .await
        .expect("open");
    (dir, meta)
}

#[tokio::test]
async fn enqueue_is_idempotent_and_claims_match_the_host() {
    let (_d, meta) = open().await;
    let jobs = [
        job("sha256:a", Isolation::Process, Some("10.0.20348")),
        job("sha256:a", Isolation::HyperV, Some("10.0.17763")),
    ];
    assert_eq!(
        meta.enqueue_jobs(&jobs, false)
            .await
            .expect("enqueue")
            .len(),
        2
    );
    assert!(meta
        .enqueue_jobs(&jobs, false)
        .await
        .expect("again")
        .is_empty());

    // A 17763 host with process isolation only matches nothing.
    let f = filter("10.0.17763", vec![Isolation::Process]);
    assert!(meta
        .claim_candidates(&f, 0, 10)
        .await
        .expect("c")
        .is_empty());
    // A 20348 host with both modes gets the 20348 process job only.
    let f = filter("10.0.20348", vec![Isolation::Process, Isolation::HyperV]);
    let c = meta.claim_candidates(&f, 0, 10).await.expect("c");
    assert_eq!(c.len(), 1);
    let j = meta
        .try_claim(c[0].0, "L1", "w1", 60)
        .await
        .expect("claim")
        .expect("won");
    assert_eq!((j.state, j.attempts), (JobState::Running, 1));
    // Nobody else can take it while the lease runs.
    assert!(meta
        .try_claim(c[0].0, "L2", "w2", 60)
        .await
        .expect("claim")
        .is_none());
    assert!(meta
        .claim_candidates(&f, 0, 10)
        .await
        .expect("c")
        .is_empty());
}

#[tokio::test]
async fn an_expired_lease_goes_to_another_worker_and_the_old_lease_is_refused() {
    let (_d, meta) = open().await;
    meta.enqueue_jobs(&[job("sha256:b", Isolation::Process, None)], false)
        .await
        .expect("enqueue");
    let f = filter("10.0.20348", vec![Isolation::Process]);
    let id = meta.claim_candidates(&f, 0, 10).await.expect("c")[0].0;
    // A lease that ended a second ago.
    meta.try_claim(id, "old", "w1", -1)
        .await
        .expect("claim")
        .expect("won");
    assert!(!meta.heartbeat_job(id, "nope", 60).await.expect("hb"));
    let j = meta
        .try_claim(id, "new", "w2", 60)
        .await
        .expect("claim")
        .expect("re-claimed");
    assert_eq!(j.attempts, 2);
    assert!(!meta.heartbeat_job(id, "old", 60).await.expect("hb"));
    assert!(meta.heartbeat_job(id, "new", 60).await.expect("hb"));
    assert_eq!(
        meta.finish_job(id, "old", &finish(JobState::Passed))
            .await
            .expect("finish"),
        Finished::LeaseLost
    );
    let Finished::Stored(done) = meta
        .finish_job(id, "new", &finish(JobState::Passed))
        .await
        .expect("f")
    else {
        panic!("not stored")
    };
    assert_eq!(done.state, JobState::Passed);
    // The same report again changes nothing.
    assert!(matches!(
        meta.finish_job(id, "new", &finish(JobState::Passed))
            .await
            .expect("f"),
        Finished::Repeated(_)
    ));
    assert_eq!(
        meta.finish_job(id, "new", &finish(JobState::Failed))
            .await
            .expect("f"),
        Finished::LeaseLost
    );
}

#[tokio::test]
async fn errors_are_retried_with_backoff_then_given_up() {
    let (_d, meta) = open().await;
    meta.enqueue_jobs(&[job("sha256:c", Isolation::Process, None)], false)
        .await
        .expect("enqueue");
    let f = filter("10.0.20348", vec![Isolation::Process]);
    let id = meta.claim_candidates(&f, 0, 10).await.expect("c")[0].0;
    meta.try_claim(id, "a", "w", 60)
        .await
        .expect("claim")
        .expect("won");
    let Finished::Stored(j) = meta
        .retry_job(id, "a", 3600, "pull failed")
        .await
        .expect("retry")
    else {
        panic!("not stored")
    };
    assert_eq!(j.state, JobState::Queued);
    // Backing off: not claimable now.
    assert!(meta
        .claim_candidates(&f, 0, 10)
        .await
        .expect("c")
        .is_empty());
    // Without backoff, the second (last) attempt's error is final.
    meta.enqueue_jobs(&[job("sha256:d", Isolation::Process, None)], false)
        .await
        .expect("enqueue");
    let id = meta.claim_candidates(&f, 0, 10).await.expect("c")[0].0;
    meta.try_claim(id, "x", "w", 60)
        .await
        .expect("c")
        .expect("won");
    meta.retry_job(id, "x", 0, "boom").await.expect("retry");
    meta.try_claim(id, "y", "w", 60)
        .await
        .expect("c")
        .expect("won again");
    let Finished::Stored(j) = meta.retry_job(id, "y", 0, "boom").await.expect("retry") else {
        panic!("not stored")
    };
    assert_eq!((j.state, j.attempts), (JobState::Error, 2));
}

#[tokio::test]
async fn leases_lost_on_the_last_attempt_end_in_error() {
    let (_d, meta) = open().await;
    let mut j = job("sha256:e", Isolation::Process, None);
    j.max_attempts = 1;
    meta.enqueue_jobs(&[j], false).await.expect("enqueue");
    let f = filter("10.0.20348", vec![Isolation::Process]);
    let id = meta.claim_candidates(&f, 0, 10).await.expect("c")[0].0;
    meta.try_claim(id, "a", "w", -1)
        .await
        .expect("c")
        .expect("won");
    assert!(meta
        .claim_candidates(&f, 0, 10)
        .await
        .expect("c")
        .is_empty());
    assert_eq!(meta.expire_jobs().await.expect("expire"), 1);
    assert_eq!(
        meta.job(id).await.expect("job").expect("row").state,
        JobState::Error
    );
    // Requeue on demand runs it again.
    let mut again = job("sha256:e", Isolation::Process, None);
    again.max_attempts = 1;
    assert_eq!(
        meta.enqueue_jobs(&[again], true).await.expect("requeue"),
        vec![id]
    );
}

#[tokio::test]
async fn candidates_page_by_id_and_duplicate_isolations_are_harmless() {
    let (_d, meta) = open().await;
    let jobs: Vec<NewJob> = (0..5)
        .map(|i| job(&format!("sha256:{i}"), Isolation::Process, None))
        .collect();
    assert_eq!(
        meta.enqueue_jobs(&jobs, false)
            .await
            .expect("enqueue")
            .len(),
        5
    );
    let f = filter(
        "10.0.20348",
        vec![Isolation::Process, Isolation::Process, Isolation::Process],
    );
    let first = meta.claim_candidates(&f, 0, 2).await.expect("page 1");
    assert_eq!(first.len(), 2);
    let second = meta
        .claim_candidates(&f, first[1].0, 2)
        .await
        .expect("page 2");
    assert_eq!(second.len(), 2);
    assert!(second[0].0 > first[1].0);
    let third = meta
        .claim_candidates(&f, second[1].0, 2)
        .await
        .expect("page 3");
    assert_eq!(third.len(), 1);
    assert!(meta
        .claim_candidates(&f, third[0].0, 2)
        .await
        .expect("page 4")
        .is_empty());
}
