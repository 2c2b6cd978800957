//! Account administration shared by the CLI and the admin API: users, groups, robots, rules.

use berth_auth::password;
use berth_oci::RepoName;
use berth_storage::meta::Meta;

/// Checks a user or robot name: the repository-name grammar without `/` keeps them simple.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name.contains('/') || name.parse::<RepoName>().is_err() {
        anyhow::bail!("invalid name {name:?}: use lowercase letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Creates or replaces a user.
pub async fn add_user(
    meta: &Meta,
    name: &str,
    pass: &str,
    admin: bool,
    groups: &[String],
) -> anyhow::Result<()> {
    check_name(name)?;
    if pass.is_empty() {
        anyhow::bail!("empty password");
    }
    let hash = hash(pass).await?;
    meta.put_user(name, &hash, admin, groups).await?;
    Ok(())
}

/// Changes a password.
pub async fn set_password(meta: &Meta, name: &str, pass: &str) -> anyhow::Result<bool> {
    if pass.is_empty() {
        anyhow::bail!("empty password");
    }
    let hash = hash(pass).await?;
    Ok(meta.set_password(name, &hash).await?)
}

async fn hash(pass: &str) -> anyhow::Result<String> {
    let p = pass.to_owned();
    tokio::task::spawn_blocking(move || password::hash(&p))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))
}

/// Parses `90d`, `12h`, `30m`, `45s` (or plain seconds).
pub fn parse_duration(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid duration {s:?}"))?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => anyhow::bail!("invalid duration {s:?}: use s, m, h, d or w"),
    };
    Ok(n * mul)
}

/// Parses `pattern:actions` (e.g. `team/*:pull,push`).
pub fn parse_allow(s: &str) -> anyhow::Result<(String, String)> {
    let (pattern, actions) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("invalid rule {s:?}: expected PATTERN:ACTIONS"))?;
    check_actions(actions)?;
    Ok((pattern.to_owned(), actions.to_owned()))
}

/// Checks a comma-separated action list.
pub fn check_actions(actions: &str) -> anyhow::Result<()> {
    for a in actions.split(',') {
        if berth_auth::Action::parse(a).is_none() {
            anyhow::bail!("unknown action {a:?}: use pull, push, delete or admin");
        }
    }
    Ok(())
}

/// Creates a robot with its rules; returns the secret (shown once, never stored in clear).
pub async fn create_robot(
    meta: &Meta,
    name: &str,
    allow: &[String],
    expires_in: Option<i64>,
) -> anyhow::Result<String> {
    check_name(name)?;
    let rules: Vec<(String, String)> = allow
        .iter()
        .map(|a| parse_allow(a))
        .collect::<anyhow::Result<_>>()?;
    let secret = password::new_secret().map_err(|e| anyhow::anyhow!(e))?;
    let hash = hash(&secret).await?;
    let expires = expires_in.map(|s| berth_storage::now_secs() + s);
    if !meta.create_robot(name, &hash, expires).await? {
        anyhow::bail!("a robot named {name:?} exists already");
    }
    for (p, a) in rules {
        meta.add_permission(&format!("robot:{name}"), &p, &a)
            .await?;
    }
    Ok(secret)
}

/// Adds a rule for a principal key (`user:NAME`, `group:NAME`, `robot:NAME`, `anonymous`).
pub async fn grant(
    meta: &Meta,
    principal: &str,
    pattern: &str,
    actions: &str,
) -> anyhow::Result<()> {
    check_actions(actions)?;
    // A grant to a name nobody holds yet would wait for whoever takes that name later.
    // Groups are only labels on users, so they may be granted to before they have members.
    if let Some(u) = principal.strip_prefix("user:") {
        if meta.user(u).await?.is_none() {
            anyhow::bail!("no user {u:?}: create it first (`berth user add {u}`)");
        }
    } else if let Some(r) = principal.strip_prefix("robot:") {
        if meta.robot(r).await?.is_none() {
            anyhow::bail!(
                "no robot \"robot${r}\": create it first (`berth robot create --name {r}`)"
            );
        }
    }
    meta.add_permission(principal, pattern, actions).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rules() {
        assert_eq!(parse_duration("90d").unwrap(), 90 * 86400);
        assert_eq!(parse_duration("15").unwrap(), 15);
        assert!(parse_duration("3y").is_err());
        assert_eq!(
            parse_allow("team/*:pull,push").unwrap(),
            ("team/*".into(), "pull,push".into())
        );
        assert!(parse_allow("team/*:fly").is_err());
        assert!(check_name("robot$x").is_err());
    }
}
