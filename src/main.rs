use std::time::Duration;

/// mimalloc instead of glibc's malloc: a request allocates and frees many small objects (parsed JSON,
/// GraphQL values, futures); measured in docs/BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use phone_auth::config::Config;
use tracing_subscriber::EnvFilter;

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
    /// Run SMS delivery workers only (no HTTP), for deployments that scale them apart; run the server
    /// with SMS_WORKERS=0 then. Uses SMS_WORKERS workers (at least one).
    Worker,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
            init_tracing();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(cli.config))
        }
        Command::Worker => {
            init_tracing();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(worker(cli.config))
        }
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
}

async fn worker(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let provider = phone_auth::app::sms_provider(&config)?;
    let outbox = std::sync::Arc::new(phone_auth::app::build_outbox(&config, provider).await?);
    let workers = phone_auth::services::outbox::spawn_workers(&outbox, config.sms.sms_workers.max(1));
    tracing::info!(workers = workers.len(), "SMS delivery workers running");
    shutdown_signal().await;
    // A job in flight when a worker stops stays pending and is claimed by another worker later.
    for w in workers {
        w.abort();
    }
    tracing::info!("workers stopped");
    Ok(())
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    // Bound first: the default JWT_ISSUER names the address actually bound (LISTEN_ADDR with port 0
    // gets a real port).
    let listener = tokio::net::TcpListener::bind(config.http.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen_addr))?;
    config.http.listen_addr = listener.local_addr()?;
    let app = phone_auth::app::build(&config, None).await?;
    tracing::info!(addr = %listener.local_addr()?, env = ?config.app_env, "listening; GraphQL at /graphql");
    let header_timeout = Duration::from_secs(config.http.header_read_timeout_seconds);
    phone_auth::http::server::serve(listener, app.router, header_timeout, shutdown_signal()).await?;
    tracing::info!("shut down");
    Ok(())
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
