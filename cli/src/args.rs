//! The command line.

use clap::{Parser, Subcommand};

/// Submit mandates to a Euglena-rs gateway and follow them.
///
/// Exit codes: 0 the task completed (or the command succeeded), 1 the task failed or the request was
/// refused (quota, limit, no such task), 2 a usage or authentication error, 3 the task was cancelled,
/// 4 the gateway could not be reached or is unavailable.
#[derive(Debug, Parser)]
#[command(name = "euglena", version, about)]
pub struct Cli {
    /// The gateway's base URL.
    #[arg(
        long,
        global = true,
        env = "EUGLENA_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// A bearer token (a Supabase access token). Without it, the session `euglena login` stored is used.
    #[arg(long, global = true, env = "EUGLENA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of text (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a mandate.
    Submit {
        /// What the agent should do.
        mandate: String,
        /// The tick budget (charged to today's quota up front; unused ticks are refunded).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_ticks: Option<u32>,
        /// Follow the task until it ends, with a progress bar, and print its result.
        #[arg(long)]
        wait: bool,
        /// With --wait: Ctrl-C cancels the task instead of leaving it running.
        #[arg(long, requires = "wait")]
        cancel_on_interrupt: bool,
        /// Makes retrying this submission safe (default: a fresh key per invocation).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Follow a task until it ends and print its result.
    Watch {
        /// The task id.
        id: String,
        /// Ctrl-C cancels the task instead of leaving it running.
        #[arg(long)]
        cancel_on_interrupt: bool,
    },
    /// Show a task.
    Status {
        /// The task id.
        id: String,
    },
    /// List my tasks, newest first.
    List {
        /// Only tasks with this status (in_queue, in_progress, cancelling, completed, failed, cancelled);
        /// repeat or separate with commas for several.
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// How many tasks to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Cancel a task (a queued one at once, a running one within a second).
    Cancel {
        /// The task id.
        id: String,
    },
    /// Show the fleet: live agents, tasks waiting, tasks being worked on.
    Agents,
    /// Sign in with a Supabase email and password and keep the session (mode 0600).
    Login {
        /// The email address (asked for when not given).
        #[arg(long)]
        email: Option<String>,
        /// Read the password from standard input instead of asking for it.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the stored session.
    Logout,
}
