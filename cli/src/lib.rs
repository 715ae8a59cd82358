//! `euglena`, the command line of Euglena-rs: submit mandates, follow them live, list, cancel, sign in.
//!
//! [`args`] is the command line, [`client`] the gateway's API and what its errors mean, [`follow`] the
//! live progress of a task, [`session`] `euglena login`, [`output`] what is printed.

pub mod args;
pub mod client;
pub mod follow;
pub mod output;
pub mod session;

use args::{Cli, Command};
use client::{CliError, Gateway};
use follow::Progress;
use session::Session;
use std::io::{BufRead, Write};

/// The exit code after Ctrl-C detached from a task that goes on (128 + SIGINT, as shells report it).
pub const DETACHED: u8 = 130;

/// Ctrl-C, listened for from the start of the process (so one pressed while the command starts is not
/// lost to the default action, which would kill the process).
#[derive(Debug)]
pub struct Interrupt(tokio::signal::unix::Signal);

impl Interrupt {
    /// Starts listening for SIGINT.
    ///
    /// # Errors
    /// When the signal handler cannot be installed.
    pub fn listen() -> std::io::Result<Self> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map(Self)
    }

    async fn pressed(&mut self) {
        self.0.recv().await;
    }
}

/// Runs `cli`, printing to standard output (results) and standard error (progress, problems). Returns
/// the exit code.
///
/// # Errors
/// [`CliError`] for what went wrong; its exit code is [`CliError::exit_code`].
pub async fn run(cli: Cli, interrupt: Interrupt) -> Result<u8, CliError> {
    if let Command::Login {
        email,
        password_stdin,
    } = &cli.command
    {
        let gateway = Gateway::new(&cli.url, None);
        let email = match email {
            Some(email) => email.clone(),
            None => prompt("Email: ")?,
        };
        let password = if *password_stdin {
            read_line()?
        } else {
            rpassword::prompt_password("Password: ")
                .map_err(|e| CliError::Usage(format!("Cannot read the password: {e}")))?
        };
        session::login(&gateway, &email, &password).await?;
        eprintln!("Signed in as {email}.");
        return Ok(0);
    }
    if matches!(cli.command, Command::Logout) {
        let forgot = Session::forget();
        eprintln!(
            "{}",
            if forgot {
                "Signed out."
            } else {
                "No session was stored."
            }
        );
        return Ok(0);
    }
    let gateway = Gateway::new(&cli.url, token(&cli).await?);
    match cli.command {
        Command::Submit {
            mandate,
            max_ticks,
            wait,
            cancel_on_interrupt,
            idempotency_key,
        } => {
            let key = idempotency_key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let task = gateway.submit(&mandate, max_ticks, &key).await?;
            if !wait {
                print(if cli.json {
                    output::json(&task)
                } else {
                    format!("{}\n", task.correlation_id)
                });
                return Ok(0);
            }
            if !cli.json {
                eprintln!("Submitted {}", task.correlation_id);
            }
            let id = task.correlation_id.to_string();
            watch(&gateway, &id, cancel_on_interrupt, cli.json, interrupt).await
        }
        Command::Watch {
            id,
            cancel_on_interrupt,
        } => watch(&gateway, &id, cancel_on_interrupt, cli.json, interrupt).await,
        Command::Status { id } => {
            let task = gateway.task(&id).await?;
            print(if cli.json {
                output::json(&task)
            } else {
                output::task(&task)
            });
            Ok(0)
        }
        Command::List { status, limit } => {
            let tasks = gateway
                .list(&status, usize::try_from(limit).unwrap_or(usize::MAX))
                .await?;
            print(if cli.json {
                output::json(&tasks)
            } else {
                output::list(&tasks)
            });
            Ok(0)
        }
        Command::Cancel { id } => {
            let task = gateway.cancel(&id).await?;
            print(if cli.json {
                output::json(&task)
            } else {
                format!("{} is {}\n", task.correlation_id, task.status.as_str())
            });
            Ok(0)
        }
        Command::Agents => {
            let figures = gateway.queue().await?;
            print(if cli.json {
                output::json(&figures)
            } else {
                output::fleet(&figures)
            });
            Ok(0)
        }
        Command::Login { .. } | Command::Logout => unreachable!("handled above"),
    }
}

/// The token: `--token`/`EUGLENA_TOKEN`, else the stored session's (refreshed when due).
async fn token(cli: &Cli) -> Result<Option<String>, CliError> {
    if let Some(token) = &cli.token {
        return Ok(Some(token.clone()));
    }
    match Session::load() {
        Some(mut session) => Ok(Some(session.token(&reqwest::Client::new()).await?)),
        None => Ok(None),
    }
}

/// Follows task `id` to its end and prints its result; Ctrl-C detaches, or cancels with
/// `cancel_on_interrupt`.
async fn watch(
    gateway: &Gateway,
    id: &str,
    cancel_on_interrupt: bool,
    json: bool,
    mut interrupt: Interrupt,
) -> Result<u8, CliError> {
    let progress = Progress::new(json);
    let finished = tokio::select! {
        finished = follow::follow(gateway, id, &progress) => finished,
        () = interrupt.pressed() => {
            if !cancel_on_interrupt {
                progress.finish();
                eprintln!("Detached: the task goes on. Follow it again with `euglena watch {id}`.");
                return Ok(DETACHED);
            }
            eprintln!("Cancelling {id}…");
            gateway.cancel(id).await?;
            follow::follow(gateway, id, &progress).await
        }
    };
    progress.finish();
    let task = finished?;
    print(if json {
        output::json(&task)
    } else {
        output::task(&task)
    });
    Ok(output::exit_code_of(&task))
}

/// Writes `text` to standard output (a closed pipe is not an error worth reporting).
fn print(text: String) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn prompt(label: &str) -> Result<String, CliError> {
    eprint!("{label}");
    let _ = std::io::stderr().flush();
    read_line()
}

fn read_line() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Usage(format!("Cannot read standard input: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
