//! The command line: `crowdtick [--config FILE] [COMMAND]`, `serve` when no command is given.

use crate::config::Config;
use crate::serve::Roles;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "crowdtick",
    version,
    about = "Real-time polling at broadcast scale: every acknowledged vote counted exactly once, live results on every screen.",
    long_about = "Real-time polling at broadcast scale: every acknowledged vote counted exactly once, live results on every screen.\n\n\
        With no command, `crowdtick` runs `serve`: every service in one process, durable on local disk under --data-dir, \
        with the web UI at http://127.0.0.1:8080/ (operator key: dev-operator-key).\n\n\
        Configuration: defaults < a TOML file (--config, or ./crowdtick.toml) < CROWDTICK_* environment variables \
        (nested keys joined by __, e.g. CROWDTICK_INGEST__DEADLINE_MS=500) < flags. `crowdtick config` prints the result."
)]
pub struct Cli {
    /// TOML configuration file (default: ./crowdtick.toml if it exists).
    #[arg(long, global = true, env = "CROWDTICK_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every service in one process on the embedded log (the default).
    Serve(ServeArgs),
    /// Distributed mode: run an ingest edge (POST /v1/votes…) producing to Kafka. Needs --kafka, --postgres.
    Ingest(ServeArgs),
    /// Distributed mode: run a processor, a member of the Kafka consumer group that counts the votes
    /// topic into the tally store (PostgreSQL, or ScyllaDB with --scylla), the tallies topic and Redis.
    /// Needs --kafka, --postgres; --redis feeds the cache.
    Processor(ServeArgs),
    /// Distributed mode: run the query API and web UI; results from Redis (refilled from the tally store).
    /// Needs --kafka, --postgres; --redis recommended.
    Query(ServeArgs),
    /// Distributed mode: run a realtime node (WebSocket/SSE) that tails the tallies topic. Needs --kafka, --postgres.
    Realtime(ServeArgs),
    /// Rebuild every tally from the votes log and check it against what was published.
    Recount(RecountArgs),
    // Help text: the `#[command(about, long_about)]` of `loadtest::LoadgenArgs` (with examples).
    Loadgen(Box<loadtest::LoadgenArgs>),
    /// Print the effective configuration (file, environment, flags) as TOML, secrets hidden.
    Config(ConfigArgs),
    /// Probe a node: exit 0 if URL answers 200, 1 otherwise (for container healthchecks; the image has no curl).
    Healthcheck(HealthcheckArgs),
    /// Create or update the PostgreSQL tables of the distributed mode (polls, partial tallies, partition checkpoints), and with --scylla the ScyllaDB keyspace and tally tables; safe to repeat.
    Migrate(MigrateArgs),
}

#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080; 127.0.0.1:0 picks a free port].
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory: the log, polls and accounts [default: ./data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Partitions of the votes topic, for a new data directory [default: 8].
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Kafka brokers (`host:port,…`): use Kafka instead of the embedded log.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// PostgreSQL URL: keep polls and partial tallies there instead of the data directory.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Redis URL (`redis://host:6379`): results cache and change notices between nodes.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Confluent schema registry URL (`http://registry:8081`): frame the Kafka records as
    /// magic byte, schema id, Avro datum, under the subjects `<topic>-value`. Needs --kafka.
    #[arg(long, value_name = "URL")]
    pub schema_registry: Option<String>,
    /// ScyllaDB nodes (`host:9042,…`): keep partial tallies, windows and checkpoints there
    /// instead of PostgreSQL (polls stay in PostgreSQL). Needs --postgres.
    #[arg(long, value_name = "HOSTS")]
    pub scylla: Option<String>,
}

#[derive(Debug, Args)]
pub struct RecountArgs {
    /// Data directory of the server whose tallies to check [default: ./data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Kafka brokers: recount the Kafka topics (as `serve --kafka`) instead of the data directory.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// PostgreSQL URL holding the polls (as `serve --postgres`).
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Schema registry URL, when the topics carry the Confluent wire format (as `serve --schema-registry`).
    #[arg(long, value_name = "URL")]
    pub schema_registry: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub settings: ServeArgs,
    /// Print the operator keys, aggregator keys, the voter-token secret and the passwords in
    /// URLs and Kafka settings as they are, instead of <redacted>.
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// What to probe: /healthz says the process serves, /readyz that it can do its job.
    #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
    pub url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL connection URL, e.g. postgres://crowdtick:secret@db:5432/crowdtick
    /// [default: postgres.url, as every service reads it (CROWDTICK_POSTGRES__URL)].
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// PostgreSQL schema that holds CrowdTick's tables, created if missing
    /// [default: postgres.schema (CROWDTICK_POSTGRES__SCHEMA), itself "crowdtick" by default].
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,
    /// ScyllaDB nodes (`host:9042,…`): also create the keyspace and tally tables there, with
    /// scylla.keyspace, scylla.replication_class and scylla.replication_factor
    /// [default: scylla.hosts (CROWDTICK_SCYLLA__HOSTS); empty: PostgreSQL only].
    #[arg(long, value_name = "HOSTS")]
    pub scylla: Option<String>,
}

impl ServeArgs {
    fn apply(&self, config: &mut Config) {
        if let Some(l) = &self.listen {
            config.listen = l.clone();
        }
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(p) = self.partitions {
            config.log.partitions = p;
        }
        if let Some(k) = &self.kafka {
            config.kafka.brokers = k.clone();
        }
        if let Some(u) = &self.postgres {
            config.postgres.url = u.clone();
        }
        if let Some(u) = &self.redis {
            config.redis.url = u.clone();
        }
        if let Some(u) = &self.schema_registry {
            config.schema_registry.url = u.clone();
        }
        if let Some(h) = &self.scylla {
            config.scylla.hosts = h.clone();
        }
    }
}

fn serve_roles(
    runtime: &tokio::runtime::Runtime,
    config: Config,
    roles: crate::serve::Roles,
) -> anyhow::Result<()> {
    config.validate()?;
    if std::env::var_os("CROWDTICK_OPERATOR_KEY").is_some()
        && config.operator_keys == Config::default().operator_keys
    {
        anyhow::bail!(
            "CROWDTICK_OPERATOR_KEY is set, but it is the key loadgen and Locust send as clients; the \
             server's keys are CROWDTICK_OPERATOR_KEYS, a list (CROWDTICK_OPERATOR_KEYS='[\"…\"]'), \
             and this server would still run with the development key. Set CROWDTICK_OPERATOR_KEYS, \
             or unset CROWDTICK_OPERATOR_KEY."
        );
    }
    let open_files = edge::listener::raise_open_file_limit();
    tracing::info!(open_files, "open-file limit");
    runtime.block_on(async {
        let listener = edge::listener::bind(&config.listen, config.http.listen_backlog)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {}: {e} (choose another with --listen)",
                    config.listen
                )
            })?;
        crate::serve::run_roles(listener, config, roles, storage::shutdown::on_signal()).await
    })
}

pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let command = cli.command.unwrap_or(Command::Serve(ServeArgs::default()));
    let only = |f: fn(&mut Roles)| {
        let mut r = Roles::NONE;
        f(&mut r);
        r
    };
    let roles = match &command {
        Command::Ingest(_) => only(|r| r.ingest = true),
        Command::Processor(_) => only(|r| r.processor = true),
        Command::Query(_) => only(|r| r.query = true),
        Command::Realtime(_) => only(|r| r.realtime = true),
        _ => Roles::ALL,
    };
    match command {
        Command::Serve(args) => {
            args.apply(&mut config);
            serve_roles(&runtime, config, Roles::ALL)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest(args)
        | Command::Processor(args)
        | Command::Query(args)
        | Command::Realtime(args) => {
            args.apply(&mut config);
            serve_roles(&runtime, config, roles)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Recount(args) => {
            if let Some(d) = args.data_dir {
                config.data_dir = d;
            }
            if let Some(k) = args.kafka {
                config.kafka.brokers = k;
            }
            if let Some(u) = args.postgres {
                config.postgres.url = u;
            }
            if let Some(u) = args.schema_registry {
                config.schema_registry.url = u;
            }
            let agrees = runtime.block_on(crate::recount::run(&config, args.json))?;
            Ok(if agrees {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Loadgen(args) => {
            runtime.block_on(loadtest::main(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(args) => {
            args.settings.apply(&mut config);
            // Refused as `serve` refuses it after the flags (the keys are checked at start).
            config.validate()?;
            if args.show_secrets {
                print!("{}", toml_of(&config));
            } else {
                println!("# secrets are shown as <redacted>; `crowdtick config --show-secrets` prints them");
                print!("{}", toml_of(&config.redacted()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck(args) => {
            let timeout = std::time::Duration::from_secs(args.timeout_secs);
            match runtime.block_on(edge::probe::status_of(&args.url, timeout)) {
                Ok(200) => Ok(ExitCode::SUCCESS),
                Ok(code) => {
                    eprintln!("{} answered {code}", args.url);
                    Ok(ExitCode::from(1))
                }
                Err(e) => {
                    eprintln!("{e:#}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Migrate(args) => {
            let mut config = config;
            if let Some(url) = args.postgres {
                config.postgres.url = url;
            }
            if let Some(schema) = args.schema {
                config.postgres.schema = schema;
            }
            if let Some(hosts) = args.scylla {
                config.scylla.hosts = hosts;
            }
            let backends = config.backends()?;
            let crate::backends::PollBackend::Postgres { url, schema } = &backends.polls else {
                anyhow::bail!(
                    "migrate needs PostgreSQL: give --postgres URL or set CROWDTICK_POSTGRES__URL"
                );
            };
            runtime.block_on(async {
                let pool = storage::postgres::connect(url).await.map_err(|e| {
                    let hint = match e.unreachable {
                        true => "is it running? (--postgres or CROWDTICK_POSTGRES__URL)",
                        false => "check the user, password and database in --postgres or CROWDTICK_POSTGRES__URL",
                    };
                    anyhow::anyhow!("{e}; {hint}")
                })?;
                let mut client = pool.get().await.map_err(|e| {
                    anyhow::anyhow!("lost the connection to PostgreSQL: {e}; try again")
                })?;
                storage::postgres::migrate(&mut client, schema).await?;
                println!("PostgreSQL schema {schema:?} is up to date");
                if let crate::backends::TallyBackend::Scylla(scylla) = &backends.tallies {
                    let session = storage::scylla::connect(scylla).await.map_err(|e| {
                        anyhow::anyhow!("{e}; is it running? (--scylla or CROWDTICK_SCYLLA__HOSTS)")
                    })?;
                    storage::scylla::migrate(&session, scylla).await?;
                    println!("ScyllaDB keyspace {:?} is up to date", scylla.keyspace);
                }
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The configuration as a file `--config` reads back.
fn toml_of(config: &Config) -> String {
    toml::to_string(config)
        .unwrap_or_else(|e| format!("# the configuration cannot be printed: {e}\n"))
}

#[cfg(test)]
mod tests;
