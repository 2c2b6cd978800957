//! The `berth` command line.

use berth_server::config::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A container image registry for Windows and Linux images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides config and BERTH_LISTEN).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (overrides config and BERTH_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Show which manifest a host would pull for a reference, and why.
    Resolve {
        /// `repository:tag` or `repository@digest`.
        reference: String,
        /// Host platform: `os/arch[/variant][:os.version]`, e.g. `windows/amd64:10.0.20348.2340`.
        #[arg(long)]
        platform: String,
        /// `process` or `hyperv` (Windows hosts).
        #[arg(long, default_value = "process")]
        isolation: String,
        /// Whose rules: `containerd` or `moby`.
        #[arg(long, default_value = "containerd")]
        rule: String,
        /// Registry URL.
        #[arg(long, env = "BERTH_URL", default_value = "http://127.0.0.1:5000")]
        registry: String,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: cli::creds::Args,
    },
    /// Show a tag's variant table: platform, os.version, size, layers, config, findings.
    Inspect {
        /// `repository:tag` or `repository@digest`.
        reference: String,
        /// Registry URL.
        #[arg(long, env = "BERTH_URL", default_value = "http://127.0.0.1:5000")]
        registry: String,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: cli::creds::Args,
    },
    /// Manage users (on the server's database).
    User {
        #[command(subcommand)]
        op: UserOp,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Manage robot accounts.
    Robot {
        #[command(subcommand)]
        op: RobotOp,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Allow a principal actions on repositories matching a pattern.
    Grant {
        #[command(flatten)]
        who: Who,
        /// Repository pattern (`*` within a component, `**` across).
        #[arg(long)]
        repo: String,
        /// Comma-separated: pull, push, delete, admin.
        #[arg(long)]
        actions: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List grants: every one, or one principal's.
    Grants {
        #[command(flatten)]
        who: Who,
        /// Print JSON (with each grant's id, for `berth revoke --id`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove grants: a principal's on one pattern (`--user alice --repo 'team/*'`), or one by
    /// `--id` (from `berth grants --json`). New tokens lose the access at once; tokens already
    /// issued run out within `auth.token_ttl_secs`.
    Revoke {
        #[command(flatten)]
        who: Who,
        /// The exact pattern the grant was made on.
        #[arg(long, requires = "who")]
        repo: Option<String>,
        /// One grant's id.
        #[arg(long, conflicts_with_all = ["repo", "who"])]
        id: Option<i64>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Verification gate: `berth verify <ref>` queues every check of a reference again;
    /// `status` shows them; `wait` blocks until they end (for CI).
    #[command(args_conflicts_with_subcommands = true)]
    Verify {
        #[command(subcommand)]
        op: Option<VerifyOp>,
        /// `repository:tag` or `repository@digest` to verify (again).
        reference: Option<String>,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: cli::verify::Conn,
    },
    /// Mirror upstream repositories: run one now, or show runs.
    Mirror {
        #[command(subcommand)]
        op: MirrorOp,
    },
    /// Collect garbage: manifests no tag reaches and blobs no manifest references, older
    /// than the grace window (docs/LIFECYCLE.md). Safe while the registry serves.
    Gc {
        /// Report what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also list the blob store for bytes no metadata row knows (left by a crash) and
        /// remove those older than the grace window. Lists every object: run it rarely.
        #[arg(long)]
        orphans: bool,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: cli::mirror::Target,
    },
    /// Byte quotas (`[[quotas]]`): usage, or a recount from the links (docs/LIFECYCLE.md).
    Quota {
        #[command(subcommand)]
        op: QuotaOp,
    },
    /// Apply the retention rules (`[retention]`, docs/LIFECYCLE.md): untag what no rule
    /// keeps; garbage collection then frees what the tags held. Safe while the registry serves.
    Retention {
        /// Report what would be untagged; untag nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: cli::mirror::Target,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The file to check.
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// The file to check, as the other commands take it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

use cli::accounts::{DbArgs, Store};

/// Whose grants: exactly one of these.
#[derive(clap::Args)]
#[group(id = "who", multiple = false)]
struct Who {
    /// A user.
    #[arg(long)]
    user: Option<String>,
    /// A group.
    #[arg(long)]
    group: Option<String>,
    /// A robot (name with or without `robot$`).
    #[arg(long)]
    robot: Option<String>,
    /// Everyone, without credentials.
    #[arg(long)]
    anonymous: bool,
}

impl Who {
    /// The principal key (`user:NAME`, ...), if one was named.
    fn principal(&self) -> Option<String> {
        match (&self.user, &self.group, &self.robot, self.anonymous) {
            (Some(u), _, _, _) => Some(format!("user:{u}")),
            (_, Some(g), _, _) => Some(format!("group:{g}")),
            (_, _, Some(r), _) => Some(format!("robot:{}", r.strip_prefix("robot$").unwrap_or(r))),
            (_, _, _, true) => Some("anonymous".to_owned()),
            _ => None,
        }
    }

    fn required(&self) -> anyhow::Result<String> {
        self.principal()
            .ok_or_else(|| anyhow::anyhow!("give --user, --group, --robot or --anonymous"))
    }
}

#[derive(Clone, clap::Args)]
struct PasswordArgs {
    /// The password (prefer --password-stdin: arguments are visible to other users).
    #[arg(long)]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand)]
enum UserOp {
    /// Create (or replace) a user.
    Add {
        name: String,
        /// Admins may do everything.
        #[arg(long)]
        admin: bool,
        /// Groups to join.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Change a password.
    Passwd {
        name: String,
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Delete a user and its rules.
    Del { name: String },
    /// List users.
    List,
    /// Revoke every refresh token of a user (docker's stored login, offline tokens).
    RevokeTokens { name: String },
}

#[derive(Subcommand)]
enum VerifyOp {
    /// Show every required check of a reference; exit 0 when all passed.
    Status {
        /// `repository:tag` or `repository@digest`.
        reference: String,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Wait until every required check ended. Exit 0: all passed; 1: one did not; 2: timeout.
    Wait {
        /// `repository:tag` or `repository@digest`.
        reference: String,
        /// Give up after this long (`30m`, `1h`, `90s`).
        #[arg(long, default_value = "30m")]
        timeout: String,
        /// How often to ask.
        #[arg(long, default_value = "2s")]
        interval: String,
    },
    /// Print the stored log tail of every check's job of a reference, or of one job by id.
    Logs {
        /// `repository:tag`, `repository@digest` or a job id.
        target: String,
    },
}

#[derive(Subcommand)]
enum QuotaOp {
    /// Each quota's limit and usage.
    Status {
        #[command(flatten)]
        target: cli::mirror::Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Count every quota again from the blob links and show it beside the running counter;
    /// exits 1 when one differs (unless --fix replaced it).
    Recompute {
        /// Replace a counter that differs by the recount.
        #[arg(long)]
        fix: bool,
        #[command(flatten)]
        target: cli::mirror::Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MirrorOp {
    /// Copy what is missing from the upstream now; exits 1 when items failed.
    Run {
        /// The mirror's name.
        name: String,
        #[command(flatten)]
        target: cli::mirror::Target,
        /// Print the run report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The last run of every mirror, or the runs of one.
    Status {
        /// A mirror's name.
        name: Option<String>,
        #[command(flatten)]
        target: cli::mirror::Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How many runs of one mirror.
        #[arg(long, default_value_t = 10)]
        n: i64,
    },
}

#[derive(Subcommand)]
enum RobotOp {
    /// Create a robot; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// PATTERN:ACTIONS, e.g. 'team/*:pull,push' (repeatable).
        #[arg(long)]
        allow: Vec<String>,
        /// Lifetime, e.g. 90d, 12h.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List robots.
    List,
    /// Delete a robot.
    Del { name: String },
    /// Revoke every refresh token of a robot.
    RevokeTokens { name: String },
}

fn read_password(pw: &PasswordArgs) -> anyhow::Result<String> {
    if let Some(p) = &pw.password {
        return Ok(p.clone());
    }
    if pw.password_stdin {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        return Ok(s.trim_end_matches(['\n', '\r']).to_owned());
    }
    anyhow::bail!("give --password or --password-stdin")
}

async fn accounts_cmd(cmd: Command) -> anyhow::Result<bool> {
    match cmd {
        Command::User { op, db } => {
            let store = Store::open(&db).await?;
            match op {
                UserOp::Add {
                    name,
                    admin,
                    groups,
                    pw,
                } => {
                    store
                        .add_user(&name, &read_password(&pw)?, admin, &groups)
                        .await?;
                    println!("user {name} saved");
                }
                UserOp::Passwd { name, pw } => {
                    if !store.set_password(&name, &read_password(&pw)?).await? {
                        anyhow::bail!("no user {name:?}");
                    }
                    println!("password of {name} changed");
                }
                UserOp::Del { name } => {
                    if !store.delete_user(&name).await? {
                        anyhow::bail!("no user {name:?}");
                    }
                    println!("user {name} deleted");
                }
                UserOp::RevokeTokens { name } => {
                    let Some(n) = store.revoke_tokens("user", &name).await? else {
                        anyhow::bail!("no user {name:?}");
                    };
                    println!("{n} refresh token(s) of {name} revoked");
                }
                UserOp::List => {
                    for u in store.users().await? {
                        let admin = if u.admin { " (admin)" } else { "" };
                        println!(
                            "{}{admin}{}",
                            u.name,
                            if u.groups.is_empty() {
                                String::new()
                            } else {
                                format!(" groups: {}", u.groups.join(","))
                            }
                        );
                    }
                }
            }
            store.close().await;
        }
        Command::Robot { op, db } => {
            let store = Store::open(&db).await?;
            match op {
                RobotOp::Create {
                    name,
                    allow,
                    expires,
                } => {
                    let secret = store
                        .create_robot(&name, &allow, expires.as_deref())
                        .await?;
                    println!("name: robot${name}");
                    println!("secret: {secret}");
                    eprintln!("the secret is shown once; store it now");
                }
                RobotOp::List => {
                    for (name, expires) in store.robots().await? {
                        match expires {
                            Some(e) => println!("robot${name} expires_at={e}"),
                            None => println!("robot${name}"),
                        }
                    }
                }
                RobotOp::RevokeTokens { name } => {
                    let n = name.strip_prefix("robot$").unwrap_or(&name);
                    let Some(count) = store.revoke_tokens("robot", n).await? else {
                        anyhow::bail!("no robot {name:?}");
                    };
                    println!("{count} refresh token(s) of robot${n} revoked");
                }
                RobotOp::Del { name } => {
                    let n = name.strip_prefix("robot$").unwrap_or(&name);
                    if !store.delete_robot(n).await? {
                        anyhow::bail!("no robot {name:?}");
                    }
                    println!("robot {name} deleted");
                }
            }
            store.close().await;
        }
        Command::Grant {
            who,
            repo,
            actions,
            db,
        } => {
            let principal = who.required()?;
            let store = Store::open(&db).await?;
            store.grant(&principal, &repo, &actions).await?;
            println!("granted {actions} on {repo} to {principal}");
            store.close().await;
        }
        Command::Grants { who, json, db } => {
            let store = Store::open(&db).await?;
            let rules = store.grants(who.principal().as_deref()).await?;
            store.close().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
            } else if rules.is_empty() {
                println!("no grants");
            } else {
                let w = rules
                    .iter()
                    .map(|r| r.principal.len())
                    .max()
                    .unwrap_or(0)
                    .max(9);
                let pw = rules
                    .iter()
                    .map(|r| r.pattern.len())
                    .max()
                    .unwrap_or(0)
                    .max(4);
                println!("{:>4}  {:<w$}  {:<pw$}  ACTIONS", "ID", "PRINCIPAL", "REPO");
                for r in rules {
                    println!(
                        "{:>4}  {:<w$}  {:<pw$}  {}",
                        r.id, r.principal, r.pattern, r.actions
                    );
                }
            }
        }
        Command::Revoke { who, repo, id, db } => {
            let store = Store::open(&db).await?;
            let done = match (id, repo) {
                (Some(id), _) => {
                    if !store.revoke_id(id).await? {
                        anyhow::bail!("no grant with id {id} (see `berth grants`)");
                    }
                    println!("grant {id} revoked");
                    Ok(())
                }
                (None, Some(repo)) => {
                    let principal = who.required()?;
                    match store.revoke(&principal, &repo).await? {
                        0 => Err(anyhow::anyhow!(
                            "no grant to {principal} on {repo:?} (see `berth grants`)"
                        )),
                        n => {
                            println!("{n} grant(s) to {principal} on {repo} revoked");
                            Ok(())
                        }
                    }
                }
                (None, None) => Err(anyhow::anyhow!(
                    "give --id, or a principal (--user, --group, --robot, --anonymous) and --repo"
                )),
            };
            store.close().await;
            done?;
        }
        _ => {}
    }
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        cmd @ (Command::User { .. }
        | Command::Robot { .. }
        | Command::Grant { .. }
        | Command::Grants { .. }
        | Command::Revoke { .. }) => cli::client::run(accounts_cmd(cmd)),
        Command::Resolve {
            reference,
            platform,
            isolation,
            rule,
            registry,
            json,
            creds,
        } => cli::client::run(cli::client::resolve(
            &registry, &reference, &platform, &isolation, &rule, json, &creds,
        )),
        Command::Inspect {
            reference,
            registry,
            json,
            creds,
        } => cli::client::run(cli::client::inspect(&registry, &reference, json, &creds)),
        Command::Verify {
            op,
            reference,
            json,
            conn,
        } => match (op, reference) {
            (Some(VerifyOp::Status { reference, json }), _) => {
                cli::verify::status(&conn, &reference, json)
            }
            (
                Some(VerifyOp::Wait {
                    reference,
                    timeout,
                    interval,
                }),
                _,
            ) => match (
                cli::verify::parse_timeout(&timeout),
                cli::verify::parse_timeout(&interval),
            ) {
                (Ok(t), Ok(i)) => cli::verify::wait(
                    &conn,
                    &reference,
                    t,
                    i.max(std::time::Duration::from_millis(200)),
                ),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("berth: {e:#}");
                    ExitCode::from(3)
                }
            },
            (Some(VerifyOp::Logs { target }), _) => cli::verify::logs(&conn, &target),
            (None, Some(reference)) => cli::verify::queue(&conn, &reference, json),
            (None, None) => {
                eprintln!("berth verify: give a reference, or `status <ref>` / `wait <ref>`");
                ExitCode::from(3)
            }
        },
        Command::Mirror { op } => match op {
            MirrorOp::Run { name, target, json } => {
                if target.registry.is_none() && std::env::var_os("RUST_LOG").is_some() {
                    let cfg = Config::default();
                    berth_server::init_logging(&cfg);
                }
                cli::client::run(cli::mirror::run(&name, &target, json))
            }
            MirrorOp::Status {
                name,
                target,
                json,
                n,
            } => cli::client::run(cli::mirror::status(name.as_deref(), &target, json, n)),
        },
        Command::Gc {
            dry_run,
            orphans,
            json,
            target,
        } => cli::client::run(cli::gc::run(
            &target,
            berth_server::registry::gc::GcMode { dry_run, orphans },
            json,
        )),
        Command::Quota { op } => match op {
            QuotaOp::Status { target, json } => cli::client::run(cli::quota::status(&target, json)),
            QuotaOp::Recompute { fix, target, json } => {
                cli::client::run(cli::quota::recompute(&target, fix, json))
            }
        },
        Command::Retention {
            dry_run,
            json,
            target,
        } => cli::client::run(cli::retention::run(&target, dry_run, json)),
        Command::CheckConfig { file, config } => {
            let file = file.or(config).expect("clap requires one");
            // Errors name the file (or the key and the file) themselves.
            match Config::load(Some(&file), false).and_then(|c| c.check_files()) {
                Ok(()) => {
                    println!("ok");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let mut cfg = match Config::load(config.as_deref(), true) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("berth: {e:#}");
                    return ExitCode::from(2);
                }
            };
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Err(e) = cfg.validate().and_then(|()| cfg.check_files()) {
                eprintln!("berth: {e:#}");
                return ExitCode::from(2);
            }
            berth_server::init_logging(&cfg);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("berth: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(berth_server::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "berth failed");
                    eprintln!("berth: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
