//! Run records of the background jobs that report on themselves (garbage collection,
//! retention): one table per kind, the same columns and the same rules.

use super::Meta;
use crate::{now_secs, Result};
use sqlx::Row;

/// Which job's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// `gc_runs`.
    Gc,
    /// `retention_runs`.
    Retention,
}

impl RunKind {
    fn table(self) -> &'static str {
        match self {
            RunKind::Gc => "gc_runs",
            RunKind::Retention => "retention_runs",
        }
    }
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunRow {
    /// Id.
    pub id: i64,
    /// `cli`, `api` or `schedule`.
    pub trigger: String,
    /// Whether nothing was removed.
    pub dry_run: bool,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub state: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds, once finished.
    pub finished_at: Option<i64>,
    /// The report (JSON text), once finished.
    pub report: Option<String>,
}

fn run_row(r: sqlx::sqlite::SqliteRow) -> RunRow {
    RunRow {
        id: r.get(0),
        trigger: r.get(1),
        dry_run: r.get::<i64, _>(2) != 0,
        state: r.get(3),
        started_at: r.get(4),
        finished_at: r.get(5),
        report: r.get(6),
    }
}

impl Meta {
    /// Records the start of a run.
    pub async fn run_start(&self, kind: RunKind, trigger: &str, dry_run: bool) -> Result<i64> {
        let id = sqlx::query_scalar(&format!(
            "INSERT INTO {} (trigger, dry_run, state, started_at) VALUES ($1, $2, 'running', $3) RETURNING id",
            kind.table()
        ))
        .bind(trigger)
        .bind(dry_run as i64)
        .bind(now_secs())
        .fetch_one(&self.write)
        .await?;
        Ok(id)
    }

    /// Records how a run ended.
    pub async fn run_finish(
        &self,
        kind: RunKind,
        id: i64,
        state: &str,
        report: &str,
    ) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE {} SET state = $2, finished_at = $3, report = $4 WHERE id = $1",
            kind.table()
        ))
        .bind(id)
        .bind(state)
        .bind(now_secs())
        .bind(report)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Marks runs older than `current` left `running` by a process that died as interrupted
    /// (the new run finishes their work). Only call while holding the job's lease: a live run
    /// holds it, so none of these is live (one that recorded itself but has not asked for the
    /// lease yet will fail to get it and record `failed` over this).
    pub async fn runs_interrupted(&self, kind: RunKind, current: i64) -> Result<u64> {
        Ok(sqlx::query(&format!(
            "UPDATE {} SET state = 'interrupted', finished_at = $1 WHERE state = 'running' AND id < $2",
            kind.table()
        ))
        .bind(now_secs())
        .bind(current)
        .execute(&self.write)
        .await?
        .rows_affected())
    }

    /// The latest runs, newest first.
    pub async fn runs(&self, kind: RunKind, limit: i64) -> Result<Vec<RunRow>> {
        Ok(sqlx::query(&format!(
            "SELECT id, trigger, dry_run, state, started_at, finished_at, report FROM {} ORDER BY id DESC LIMIT $1",
            kind.table()
        ))
        .bind(limit)
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(run_row)
        .collect())
    }

    /// One run.
    pub async fn run(&self, kind: RunKind, id: i64) -> Result<Option<RunRow>> {
        Ok(sqlx::query(&format!(
            "SELECT id, trigger, dry_run, state, started_at, finished_at, report FROM {} WHERE id = $1",
            kind.table()
        ))
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        .map(run_row))
    }
}
