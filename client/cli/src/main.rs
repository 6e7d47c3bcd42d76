//! `carpool`: submit and inspect tasks from the shell. The lab's commands (`demo`,
//! `compare`, `bench`, `experiment`, `simulate`) are handed to `carpool-lab`.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

mod render;
mod top;

use carpool_client::{Client, ConnectOptions};
use carpool_proto::{Bytes, Secret, TlsOptions};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::ProgressBar;

/// carpool: many short serverless tasks share one function instance.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "The lab (run by carpool-lab, built alongside): carpool demo | compare | bench | experiment | simulate; `carpool demo --help` and so on for each."
)]
struct Cli {
    /// The coordinator.
    #[arg(
        long,
        global = true,
        env = "CARPOOL_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Log format on stderr: `text`, or `json` (one object per line, task and worker ids as
    /// fields).
    #[arg(long, global = true, env = "CARPOOL_LOG_FORMAT", default_value = "text", value_parser = carpool_proto::LOG_FORMATS)]
    log_format: String,
    /// The coordinator's client token (`authorization: Bearer …`).
    #[arg(
        long,
        global = true,
        env = "CARPOOL_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the client token.
    #[arg(long, global = true, env = "CARPOOL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM of the CA that signed the coordinator's certificate (for an https:// URL).
    #[arg(long, global = true, env = "CARPOOL_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The name to verify the coordinator's certificate against, if not the URL's host.
    #[arg(long, global = true, env = "CARPOOL_TLS_DOMAIN")]
    tls_domain: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Submit one task and print its id.
    Submit {
        /// The function to run.
        function: String,
        /// The payload as text (e.g. JSON); "-" reads stdin.
        #[arg(default_value = "")]
        payload: String,
        /// Longest one attempt may run, e.g. "30s" [default: the coordinator's].
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Finish within this, e.g. "10s": refused at once (FAILED_PRECONDITION) when what
        /// the coordinator has measured says it cannot [default: none].
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<std::time::Duration>,
    },
    /// Submit one task, wait, and print its result as JSON.
    Run {
        /// The function to run.
        function: String,
        /// The payload as text (e.g. JSON); "-" reads stdin.
        #[arg(default_value = "")]
        payload: String,
        /// Longest one attempt may run, e.g. "30s" [default: the coordinator's].
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Finish within this, e.g. "10s": refused at once (FAILED_PRECONDITION) when what
        /// the coordinator has measured says it cannot [default: none].
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<std::time::Duration>,
    },
    /// Print a task's state, attempts, worker and result as JSON.
    Get {
        /// The task id.
        task_id: u64,
    },
    /// Cancel a task and print its state.
    Cancel {
        /// The task id.
        task_id: u64,
    },
    /// Run each line of the input (JSON lines) as a task; print each result as a JSON line
    /// as it finishes (with "seq", the line's position), with a progress bar on stderr.
    Map {
        /// The function to run.
        function: String,
        /// Read payloads from this file instead of stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The most these tasks may cost, in US dollars (their estimated bill at Lambda's
        /// price): past it the coordinator cancels the pending ones and refuses the rest.
        #[arg(long)]
        budget_usd: Option<f64>,
        /// Finish them all within this of the start, e.g. "60s": a task that cannot, by
        /// what the coordinator has measured, is refused at once (FAILED_PRECONDITION).
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<std::time::Duration>,
        /// Longest one attempt of each may run, e.g. "2s" [default: the coordinator's]; a
        /// task known to end within it is also taken late in a worker's life.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// List workers.
    Workers {
        /// Only this function's.
        #[arg(long, default_value = "")]
        function: String,
    },
    /// Print task counts, workers and the bill.
    Stats,
    /// Forget what was learned of a function (its concurrency level and what each memory
    /// size cost, at every size), for a handler that changed: its next workers start as a
    /// first batch's do and every size offered is tried again.
    Relearn {
        /// The function.
        function: String,
    },
    /// A live view of the coordinator, refreshed every second: functions (pending, running,
    /// rates, limits, cost) and workers (state, running/limit, CPU, memory, age); q quits.
    Top,
    /// The lab: `demo`, `compare`, `bench`, `experiment` and `simulate` are run by
    /// `carpool-lab` (built alongside, next to this binary), so that this command depends on
    /// the client alone.
    #[command(external_subcommand)]
    Lab(Vec<OsString>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    carpool_proto::init_logging(&cli.log_format, "warn");
    match execute(cli).await {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("carpool: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> Result<ExitCode, String> {
    if let Command::Lab(args) = cli.command {
        return Err(lab(&cli.log_format, args));
    }
    let token = Secret::from_value_or_file(cli.token.as_deref(), cli.token_file.as_deref(), "--token")?;
    let ca_pem = match &cli.tls_ca {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("--tls-ca {}: {e}", p.display()))?),
        None => None,
    };
    let tls = TlsOptions {
        ca_pem,
        domain: cli.tls_domain.clone(),
    };
    let options = ConnectOptions { token, tls };
    if let Command::Top = cli.command {
        top::run(&cli.coordinator, &options).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let client = Client::connect_with(&cli.coordinator, &options)
        .await
        .map_err(|e| e.to_string())?;
    let e = |e: carpool_client::Error| e.to_string();
    match cli.command {
        Command::Submit {
            function,
            payload,
            timeout,
            deadline,
        } => {
            let mut request = carpool_client::Client::request(&function, read_payload(payload)?, timeout);
            request.deadline_ms = carpool_client::millis(deadline);
            let id = client.submit_request(request).await.map_err(e)?;
            println!("{id}");
        }
        Command::Run {
            function,
            payload,
            timeout,
            deadline,
        } => {
            let mut request = carpool_client::Client::request(&function, read_payload(payload)?, timeout);
            request.deadline_ms = carpool_client::millis(deadline);
            let r = client.run_request(request).await.map_err(e)?;
            println!("{}", render::result_json(&r));
            if r.state() != carpool_client::TaskState::Succeeded {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Get { task_id } => println!("{}", render::info_json(&client.get(task_id).await.map_err(e)?)),
        Command::Cancel { task_id } => {
            let state = client.cancel(task_id).await.map_err(e)?;
            println!("{}", render::state_name(state));
        }
        Command::Map {
            function,
            input,
            budget_usd,
            deadline,
            timeout,
        } => {
            let options = carpool_client::MapOptions {
                budget_usd,
                deadline,
                timeout,
            };
            return map(&client, &function, input, options).await;
        }
        Command::Workers { function } => print!(
            "{}",
            render::workers_table(&client.workers(&function).await.map_err(e)?)
        ),
        Command::Stats => print!("{}", render::stats_table(&client.stats().await.map_err(e)?)),
        Command::Relearn { function } => {
            let r = client.relearn(&function).await.map_err(e)?;
            println!(
                "forgot {function}'s learned level at {} memory size(s) and its cost at {}",
                r.levels, r.costs
            );
        }
        Command::Top | Command::Lab(_) => {
            unreachable!("handled above")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_payload(arg: String) -> Result<Bytes, String> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| format!("reading stdin: {e}"))?;
        Ok(Bytes::from(buf))
    } else {
        Ok(Bytes::from(arg))
    }
}

async fn map(
    client: &Client,
    function: &str,
    input: Option<PathBuf>,
    options: carpool_client::MapOptions,
) -> Result<ExitCode, String> {
    let lines: Vec<Bytes> = match &input {
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            collect_lines(std::io::BufReader::new(file))?
        }
        None => collect_lines(std::io::stdin().lock())?,
    };
    let bar = ProgressBar::new(lines.len() as u64);
    let total = lines.len();
    let mut results = client
        .map_with(function, futures::stream::iter(lines), options)
        .await
        .map_err(|e| e.to_string())?;
    let mut failed = 0usize;
    let mut stdout = std::io::stdout().lock();
    while let Some(r) = results.next().await {
        let r = r.map_err(|e| e.to_string())?;
        bar.inc(1);
        let mut line = match &r.result {
            Some(res) => {
                if res.state() != carpool_client::TaskState::Succeeded {
                    failed += 1;
                }
                render::result_json(res)
            }
            None => {
                failed += 1;
                let code = format!("{:?}", tonic::Code::from(r.rejected_code));
                serde_json::json!({ "rejected": r.rejected, "code": code })
            }
        };
        line["seq"] = r.seq.into();
        writeln!(stdout, "{line}").map_err(|e| e.to_string())?;
    }
    bar.finish_and_clear();
    if failed > 0 {
        eprintln!("carpool: {failed} of {total} tasks did not succeed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn collect_lines(reader: impl BufRead) -> Result<Vec<Bytes>, String> {
    reader
        .lines()
        .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|l| l.map(Bytes::from).map_err(|e| format!("reading input: {e}")))
        .collect()
}

/// The lab's commands, run by `carpool-lab` next to this binary (this process becomes it).
const LAB: [&str; 5] = ["demo", "compare", "bench", "experiment", "simulate"];

/// Hands `args` (a lab command and its arguments) to `carpool-lab`, which this process
/// becomes; returns only the reason it could not.
fn lab(log_format: &str, args: Vec<OsString>) -> String {
    use std::os::unix::process::CommandExt;
    let name = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !LAB.contains(&name.as_str()) {
        return format!(
            "unknown command {name:?}: see `carpool --help` (the lab's commands are {})",
            LAB.join(", ")
        );
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let path = exe.with_file_name("carpool-lab");
    if !path.is_file() {
        return format!(
            "`carpool {name}` is run by carpool-lab, not found next to this binary ({}): build it with `cargo build --release --bins`",
            path.display()
        );
    }
    let err = std::process::Command::new(&path)
        .args(["--log-format", log_format])
        .args(args)
        .exec();
    format!("running {}: {err}", path.display())
}
