//! Access-control tables: users, groups, robots and permission rules. No policy here: the
//! `berth-auth` crate decides what the rows mean.

use super::{Meta, WriteTx};
use crate::{now_secs, Result};
use sqlx::Row;

/// A user row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// argon2 PHC string.
    pub password_hash: String,
    /// Admins may do everything.
    pub admin: bool,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
}

/// A robot account row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Robot {
    /// Name without the `robot$` prefix.
    pub name: String,
    /// argon2 PHC string of the secret.
    pub secret_hash: String,
    /// Unix seconds after which the robot is refused.
    pub expires_at: Option<i64>,
}

/// A permission rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// Row id.
    pub id: i64,
    /// `user:NAME`, `group:NAME`, `robot:NAME` or `anonymous`.
    pub principal: String,
    /// Repository pattern.
    pub pattern: String,
    /// Comma-separated actions.
    pub actions: String,
}

impl Meta {
    /// Creates or replaces a user (and its group memberships).
    pub async fn put_user(
        &self,
        name: &str,
        password_hash: &str,
        admin: bool,
        groups: &[String],
    ) -> Result<()> {
        let mut tx = WriteTx::begin(&self.write).await?;
        sqlx::query(
            "INSERT INTO users (name, password_hash, admin, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, admin = excluded.admin",
        )
        .bind(name)
        .bind(password_hash)
        .bind(admin)
        .bind(now_secs())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM group_members WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        // A replaced account starts without the old one's refresh tokens.
        revoke_tx(&mut tx, &format!("user:{name}")).await?;
        for g in groups {
            sqlx::query("INSERT INTO group_members (group_name, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(g)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Changes a password and revokes the user's refresh tokens. False if there is no such
    /// user.
    pub async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let r = sqlx::query("UPDATE users SET password_hash = $2 WHERE name = $1")
            .bind(name)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        revoke_tx(&mut tx, &format!("user:{name}")).await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// A user with its groups.
    pub async fn user(&self, name: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT password_hash, admin FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let groups: Vec<String> = sqlx::query_scalar(
            "SELECT group_name FROM group_members WHERE user_name = $1 ORDER BY group_name",
        )
        .bind(name)
        .fetch_all(&self.read)
        .await?;
        Ok(Some(User {
            name: name.to_owned(),
            password_hash: row.get(0),
            admin: row.get(1),
            groups,
        }))
    }

    /// All users, by name (hashes included; callers must not print them).
    pub async fn users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT name, password_hash, admin FROM users ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        let members =
            sqlx::query("SELECT user_name, group_name FROM group_members ORDER BY group_name")
                .fetch_all(&self.read)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let name: String = r.get(0);
                let groups = members
                    .iter()
                    .filter(|m| m.get::<String, _>(0) == name)
                    .map(|m| m.get::<String, _>(1))
                    .collect();
                User {
                    password_hash: r.get(1),
                    admin: r.get(2),
                    groups,
                    name,
                }
            })
            .collect())
    }

    /// Deletes a user, its memberships and its rules. False if there was none.
    pub async fn delete_user(&self, name: &str) -> Result<bool> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let r = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM group_members WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM permissions WHERE principal = $1")
            .bind(format!("user:{name}"))
            .execute(&mut *tx)
            .await?;
        forget_tx(&mut tx, &format!("user:{name}")).await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Creates a robot. False if the name is taken.
    pub async fn create_robot(
        &self,
        name: &str,
        secret_hash: &str,
        expires_at: Option<i64>,
    ) -> Result<bool> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let r = sqlx::query(
            "INSERT INTO robots (name, secret_hash, expires_at, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(secret_hash)
        .bind(expires_at)
        .bind(now_secs())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() > 0 {
            // Nothing issued to an earlier robot of this name carries over.
            forget_tx(&mut tx, &format!("robot:{name}")).await?;
        }
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// A robot by name (without `robot$`).
    pub async fn robot(&self, name: &str) -> Result<Option<Robot>> {
        let row = sqlx::query("SELECT secret_hash, expires_at FROM robots WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| Robot {
            name: name.to_owned(),
            secret_hash: r.get(0),
            expires_at: r.get(1),
        }))
    }

    /// All robots.
    pub async fn robots(&self) -> Result<Vec<Robot>> {
        let rows = sqlx::query("SELECT name, secret_hash, expires_at FROM robots ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Robot {
                name: r.get(0),
                secret_hash: r.get(1),
                expires_at: r.get(2),
            })
            .collect())
    }

    /// Deletes a robot and its rules.
    pub async fn delete_robot(&self, name: &str) -> Result<bool> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let r = sqlx::query("DELETE FROM robots WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM permissions WHERE principal = $1")
            .bind(format!("robot:{name}"))
            .execute(&mut *tx)
            .await?;
        forget_tx(&mut tx, &format!("robot:{name}")).await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Adds a rule.
    pub async fn add_permission(
        &self,
        principal: &str,
        pattern: &str,
        actions: &str,
    ) -> Result<()> {
        sqlx::query("INSERT INTO permissions (principal, pattern, actions, created_at) VALUES ($1, $2, $3, $4)")
            .bind(principal)
            .bind(pattern)
            .bind(actions)
            .bind(now_secs())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Removes one rule; false when no rule has that id.
    pub async fn delete_permission(&self, id: i64) -> Result<bool> {
        let r = sqlx::query("DELETE FROM permissions WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Removes every rule of `principal` on exactly `pattern`; answers how many.
    pub async fn delete_permissions(&self, principal: &str, pattern: &str) -> Result<u64> {
        let r = sqlx::query("DELETE FROM permissions WHERE principal = $1 AND pattern = $2")
            .bind(principal)
            .bind(pattern)
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected())
    }

    /// Rules of any of `principals` (all rules when empty), filtered in SQL: this runs for
    /// every token request.
    pub async fn permissions(&self, principals: &[String]) -> Result<Vec<Permission>> {
        let mut sql = String::from("SELECT id, principal, pattern, actions FROM permissions");
        if !principals.is_empty() {
            let marks: Vec<String> = (1..=principals.len()).map(|i| format!("${i}")).collect();
            sql.push_str(&format!(" WHERE principal IN ({})", marks.join(", ")));
        }
        sql.push_str(" ORDER BY id");
        let mut q = sqlx::query(&sql);
        for p in principals {
            q = q.bind(p);
        }
        let rows = q.fetch_all(&self.read).await?;
        Ok(rows
            .into_iter()
            .map(|r| Permission {
                id: r.get(0),
                principal: r.get(1),
                pattern: r.get(2),
                actions: r.get(3),
            })
            .collect())
    }
}

/// Marks every refresh token of `principal` revoked.
async fn revoke_tx(tx: &mut WriteTx, principal: &str) -> Result<u64> {
    let r =
        sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE principal = $1 AND revoked = 0")
            .bind(principal)
            .execute(&mut **tx)
            .await?;
    Ok(r.rows_affected())
}

/// Removes every refresh token of `principal` (the account is gone).
async fn forget_tx(tx: &mut WriteTx, principal: &str) -> Result<()> {
    sqlx::query("DELETE FROM refresh_tokens WHERE principal = $1")
        .bind(principal)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Meta {
    /// Records a refresh token berth issued (`principal`: `user:NAME` or `robot:NAME`).
    /// Rows that expired a day ago or more are dropped on the way.
    pub async fn store_refresh_token(
        &self,
        jti: &str,
        principal: &str,
        expires_at: i64,
    ) -> Result<()> {
        let now = now_secs();
        let mut tx = WriteTx::begin(&self.write).await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
            .bind(now - 86400)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (jti, principal, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(jti)
        .bind(principal)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether a refresh token is still honoured: recorded for `principal`, not revoked, not
    /// expired.
    pub async fn refresh_token_valid(&self, jti: &str, principal: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM refresh_tokens WHERE jti = $1 AND principal = $2 \
             AND revoked = 0 AND expires_at > $3",
        )
        .bind(jti)
        .bind(principal)
        .bind(now_secs())
        .fetch_one(&self.write)
        .await?;
        Ok(n > 0)
    }

    /// Rotation: revokes the refresh token `old` and records `new` (jti, expiry) in one
    /// transaction. False (and nothing recorded) when `old` was no longer valid, so a token
    /// is exchanged once at most, and a revoke that ran meanwhile also covers the new one.
    pub async fn rotate_refresh_token(
        &self,
        old: &str,
        principal: &str,
        new: (&str, i64),
    ) -> Result<bool> {
        let now = now_secs();
        let mut tx = WriteTx::begin(&self.write).await?;
        let r = sqlx::query(
            "UPDATE refresh_tokens SET revoked = 1 WHERE jti = $1 AND principal = $2 \
             AND revoked = 0 AND expires_at > $3",
        )
        .bind(old)
        .bind(principal)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.commit().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO refresh_tokens (jti, principal, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(new.0)
        .bind(principal)
        .bind(now)
        .bind(new.1)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Revokes every refresh token of `principal`; returns how many were live.
    pub async fn revoke_refresh_tokens(&self, principal: &str) -> Result<u64> {
        let mut tx = WriteTx::begin(&self.write).await?;
        let n = revoke_tx(&mut tx, principal).await?;
        tx.commit().await?;
        Ok(n)
    }
}
