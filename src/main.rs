use std::time::Duration;

/// mimalloc instead of glibc's malloc: a request allocates and frees many small objects (parsed JSON,
/// GraphQL values, futures); measured in docs/BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use phone_auth::config::Config;

#[derive(Parser)]
#[command(
    name = "phone-auth",
    version,
    about = "Phone-number authentication as a GraphQL API"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Print the GraphQL schema (SDL) to standard output; `schema.graphql` is this output.
    PrintSchema,
    /// Print a fresh Ed25519 signing key in JWT_SIGNING_KEYS form.
    GenerateKey,
    /// Operator commands against the live stores (unlock, sessions, user, sms, keys, audit).
    Admin {
        #[command(subcommand)]
        command: phone_auth::admin::AdminCommand,
    },
    /// Run SMS delivery workers only (no HTTP), for deployments that scale them apart; run the server
    /// with SMS_WORKERS=0 then. Uses SMS_WORKERS workers (at least one).
    Worker,
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Whether APP_ENV was given or defaulted: Config::validate refuses a forgotten one on the network.
    cli.config.note_sources(&matches);
    match cli.command.unwrap_or(Command::Serve) {
        Command::PrintSchema => {
            print!("{}", phone_auth::graphql::sdl());
            Ok(())
        }
        Command::GenerateKey => {
            println!(
                "{}",
                phone_auth::services::tokens::SigningKey::generate()?.to_config()
            );
            Ok(())
        }
        Command::Serve => {
            let _log = phone_auth::ops::logging::init(cli.config.ops.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(cli.config))
        }
        Command::Admin { command } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(phone_auth::admin::run(&cli.config, command)),
        Command::Worker => {
            let _log = phone_auth::ops::logging::init(cli.config.ops.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(worker(cli.config))
        }
    }
}

async fn worker(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    // Before anything listens: workers apart from the server need the outbox in Redis.
    anyhow::ensure!(
        !config.embedded_stores(),
        "phone-auth worker needs REDIS_URL and DATABASE_URL: with the embedded backend the server \
         delivers its SMS itself (SMS_WORKERS)"
    );
    config.log_profile(true);
    if let Some(addr) = config.ops.metrics_addr()? {
        phone_auth::ops::metrics::serve(addr, phone_auth::ops::metrics::install()?).await?;
    }
    let provider = phone_auth::app::sms_provider(&config)?;
    // The codes in the jobs are sealed under a key derived from the server's secret: a generated one
    // would open none of them.
    let secret = config.otp.otp_hmac_secret.as_ref().context(
        "phone-auth worker needs OTP_HMAC_SECRET, the server's: the codes in the SMS jobs are encrypted under a key derived from it",
    )?;
    let secret = secrecy::SecretSlice::from(secrecy::ExposeSecret::expose_secret(secret).as_bytes().to_vec());
    let outbox = std::sync::Arc::new(phone_auth::app::build_outbox(&config, provider, &secret).await?);
    let workers = phone_auth::services::outbox::spawn_workers(&outbox, config.sms.sms_workers.max(1));
    tracing::info!(
        workers = config.sms.sms_workers.max(1),
        "SMS delivery workers running"
    );
    shutdown_signal().await;
    // A job in flight when a worker stops stays pending and is claimed by another worker later.
    for w in workers {
        w.abort();
    }
    tracing::info!("workers stopped");
    Ok(())
}

/// How long shutdown waits for detached flows (`AuthService::detached`) once the HTTP server stopped.
/// The longest flow waits for a hashing thread (HASH_QUEUE_TIMEOUT_MS, 2 s), hashes (under 1 s on
/// one core), and talks to the stores (each call bounded by its timeout, 2-3 s): 15 s covers it with
/// room, and fits the 30 s Kubernetes grants between SIGTERM and SIGKILL along with the drain.
const DETACHED_FLOWS_GRACE: Duration = Duration::from_secs(15);
/// How long shutdown waits for the audit writer to write what is queued (a COPY takes milliseconds;
/// this covers a PostgreSQL that answers slowly, within an orchestrator's usual 30 s grace).
const AUDIT_CLOSE_GRACE: Duration = Duration::from_secs(5);

async fn serve(mut config: Config) -> anyhow::Result<()> {
    // Bound first: the default JWT_ISSUER names the address actually bound (LISTEN_ADDR with port 0
    // gets a real port).
    let listener = tokio::net::TcpListener::bind(config.http.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen_addr))?;
    config.http.listen_addr = listener.local_addr()?;
    let app = phone_auth::app::build(&config, None).await?;
    if let (Some(addr), Some(handle)) = (config.ops.metrics_addr()?, app.metrics.clone()) {
        phone_auth::ops::metrics::serve(addr, handle).await?;
    }
    tracing::info!(addr = %listener.local_addr()?, env = ?config.app_env, "listening; GraphQL at /graphql");
    if app.embedded.is_some() {
        embedded_banner(&config, listener.local_addr()?);
    }
    let header_timeout = Duration::from_secs(config.http.header_read_timeout_seconds);
    let drain = Duration::from_secs(config.http.shutdown_drain_seconds);
    let draining = app.draining.clone();
    // SIGTERM: first /readyz says 503 for the drain period while every request is still served, so
    // the load balancer stops sending; then the listener closes and requests in flight finish.
    let shutdown = async move {
        shutdown_signal().await;
        draining.start();
        tracing::info!(?drain, "shutting down: draining (/readyz answers 503)");
        tokio::time::sleep(drain).await;
        tracing::info!("drained: closing the listener");
    };
    phone_auth::http::server::serve(listener, app.router, header_timeout, shutdown).await?;
    let running = app.auth.detached_running();
    if running > 0 {
        tracing::info!(flows = running, "waiting for detached flows to finish");
    }
    if !app.auth.wait_detached(DETACHED_FLOWS_GRACE).await {
        tracing::warn!(
            flows = app.auth.detached_running(),
            "shutdown: detached flows still running after {DETACHED_FLOWS_GRACE:?}; stopping them"
        );
    }
    // Last: nothing is left to record an event. Queued audit events (sign-in failures, locks,
    // code events) are written before the process exits.
    app.auth.audit().close(AUDIT_CLOSE_GRACE).await;
    tracing::info!("shut down");
    Ok(())
}

/// Says, where a person starting the service will see it, that its data lives in memory only.
fn embedded_banner(config: &Config, addr: std::net::SocketAddr) {
    let graphiql = if config.http.graphiql.unwrap_or(!config.production()) {
        format!("GraphiQL:  http://{addr}/graphql (open it in a browser)")
    } else {
        "GraphiQL:  off (GRAPHIQL=false)".to_owned()
    };
    let rule = "=".repeat(78);
    eprintln!(
        "\n{rule}\n phone-auth on its EMBEDDED backend: no DATABASE_URL / REDIS_URL was set.\n \
         Users, sessions, codes, locks and queued SMS live in this process's memory\n \
         and are LOST when it exits. For development only (refused with APP_ENV=production).\n \
         {graphiql}\n \
         Set DATABASE_URL and REDIS_URL to run on PostgreSQL and Redis.\n{rule}\n"
    );
}

/// Ctrl-C or SIGTERM (what `docker stop` and Kubernetes send): stop accepting, finish what is in flight.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
