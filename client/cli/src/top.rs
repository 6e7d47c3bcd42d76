//! `carpool top`: a live view of a coordinator, refreshed every second: its functions
//! (pending, running, completion rate, limits, cost so far), their workers' lives (the
//! duration a task is expected to take, admissions refused for time, successors and how
//! early, the hand-over wait, attempts killed at a deadline) and its workers (state,
//! running/limit, CPU, memory, age). While the coordinator is unreachable (a restart) it
//! keeps the last figures and says it is reconnecting; `q` or Ctrl-C quits.

use std::time::{Duration, Instant};

use carpool_client::{Client, ConnectOptions};
use carpool_proto::pb;
use crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Row, Table};

/// How often the view is refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// What one refresh shows.
#[derive(Clone, Debug, Default)]
pub(crate) struct View {
    /// The coordinator's URL.
    pub url: String,
    /// `None` while connected; else why the last refresh failed.
    pub reconnecting: Option<String>,
    /// The last Stats.
    pub stats: pb::StatsResponse,
    /// Tasks finished per second per function, over the last refresh.
    pub rates: Vec<(String, f64)>,
    /// The last worker list.
    pub workers: Vec<pb::WorkerInfo>,
}

/// Draws `view` on `frame`.
pub(crate) fn render(frame: &mut Frame<'_>, view: &View) {
    // The lives box, for the functions whose workers' lives have anything to show.
    let lives: Vec<&pb::FunctionStats> = view
        .stats
        .functions
        .iter()
        .filter(|f| {
            f.duration_bound_ms > 0
                || f.refused_for_time > 0
                || f.successors_started > 0
                || f.killed_at_deadline > 0
                || f.handover_wait_ms > 0
        })
        .collect();
    let lives_rows = if lives.is_empty() {
        0
    } else {
        lives.len() as u16 + 3
    };
    let [status, functions, life, workers] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Percentage(40),
        Constraint::Length(lives_rows.min(8)),
        Constraint::Min(3),
    ])
    .areas(frame.area());
    let line = match &view.reconnecting {
        None => format!(
            "carpool top: {}, up {}s; q quits",
            view.url,
            view.stats.uptime_ms / 1000
        ),
        Some(why) => format!(
            "carpool top: {} is unreachable, reconnecting ({why}); q quits",
            view.url
        ),
    };
    frame.render_widget(Line::from(line), status);

    let bold = Style::default().add_modifier(Modifier::BOLD);
    let rows = view.stats.functions.iter().map(|f| {
        let rate = view
            .rates
            .iter()
            .find(|(n, _)| *n == f.function)
            .map_or(0.0, |(_, r)| *r);
        Row::new(vec![
            f.function.clone(),
            f.pending.to_string(),
            f.running.to_string(),
            format!("{rate:.1}"),
            (f.succeeded + f.failed + f.cancelled).to_string(),
            f.failed.to_string(),
            format!("{}+{}", f.workers_live, f.workers_starting),
            format!("{:.1}", f.slots_mean),
            if f.slots_learned == 0 {
                "-".into()
            } else {
                f.slots_learned.to_string()
            },
            match f.memory_reason.as_str() {
                "exploring" => format!("{} try", f.memory_mb),
                "revisiting" => format!("{} again", f.memory_mb),
                "unmeasured" => format!("{} ?", f.memory_mb),
                _ => f.memory_mb.to_string(),
            },
            bound_secs(f.duration_bound_ms),
            format!("{}/{}", f.successors_started, f.killed_at_deadline),
            format!("{:.6}", f.cost_usd),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(12),
        ],
    )
    .header(
        Row::new([
            "FUNCTION",
            "PENDING",
            "RUNNING",
            "DONE/s",
            "FINISHED",
            "FAILED",
            "WORKERS",
            "LIMIT",
            "LEARNED",
            "SIZE MB",
            "TASK ≤ s",
            "SUCC/KILL",
            "COST USD",
        ])
        .style(bold),
    )
    .block(Block::bordered().title("functions"));
    frame.render_widget(table, functions);

    if !lives.is_empty() {
        render_lives(frame, life, &lives);
    }

    let rows = view.workers.iter().map(|w| {
        let (cpu, memory) = crate::render::sample_percents(w.last_sample.as_ref());
        Row::new(vec![
            w.worker_id.clone(),
            w.function.clone(),
            state_name(w.state()),
            format!("{}/{}", w.running_tasks, w.slots),
            cpu,
            memory,
            format!("{}s", w.age_ms / 1000),
            w.tasks_done.to_string(),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(16),
            Constraint::Min(10),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new([
            "WORKER", "FUNCTION", "STATE", "RUN/LIM", "CPU", "MEM", "AGE", "DONE",
        ])
        .style(bold),
    )
    .block(Block::bordered().title("workers"));
    frame.render_widget(table, workers);
}

/// Milliseconds as seconds, two decimals.
fn secs(ms: u64) -> String {
    format!("{:.2}", ms as f64 / 1000.0)
}

/// A function's duration figure in seconds, `-` while none is known (0).
fn bound_secs(ms: u64) -> String {
    if ms == 0 { "-".into() } else { secs(ms) }
}

/// The workers' lives of `functions`: what a task is expected to take (when admissions end),
/// the share of a fresh worker's life that takes tasks of unknown length and, where that is
/// short of the fixed rule's, the life that would not be (Stats' `life_wanted_ms`), tasks refused for time and bounded ones taken late, successors and how far ahead the
/// latest started, the hand-over wait (in all, and the longest) and attempts killed at a
/// deadline.
fn render_lives(frame: &mut Frame<'_>, area: ratatui::layout::Rect, functions: &[&pb::FunctionStats]) {
    let rows = functions.iter().map(|f| {
        Row::new(vec![
            f.function.clone(),
            bound_secs(f.duration_bound_ms),
            format!("{:.0}", f.admitting_share * 100.0),
            bound_secs(f.life_wanted_ms),
            f.refused_for_time.to_string(),
            f.taken_late.to_string(),
            f.successors_started.to_string(),
            secs(f.successor_lead_ms),
            format!("{}/{}", f.handover_wait_ms, f.handover_wait_longest_ms),
            f.killed_at_deadline.to_string(),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Length(8),
            Constraint::Length(5),
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new([
            "FUNCTION",
            "TASK ≤ s",
            "ADMITS%",
            "LIFE WANTED",
            "REFUSED",
            "LATE",
            "SUCCESSORS",
            "AHEAD s",
            "HAND-OVER ms",
            "KILLED",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title("worker lives (hand-over: in all/longest)"));
    frame.render_widget(table, area);
}

fn state_name(s: pb::WorkerState) -> String {
    s.as_str_name()
        .trim_start_matches("WORKER_STATE_")
        .to_ascii_lowercase()
}

/// Tasks finished per second per function between two Stats `dt` apart.
pub(crate) fn rates(
    before: &pb::StatsResponse,
    after: &pb::StatsResponse,
    dt: Duration,
) -> Vec<(String, f64)> {
    let secs = dt.as_secs_f64().max(1e-3);
    let done = |f: &pb::FunctionStats| f.succeeded + f.failed + f.cancelled;
    after
        .functions
        .iter()
        .map(|f| {
            let prior = before
                .functions
                .iter()
                .find(|b| b.function == f.function)
                .map_or(done(f), done);
            (f.function.clone(), done(f).saturating_sub(prior) as f64 / secs)
        })
        .collect()
}

/// One refresh: Stats and the workers, through `client` (connected on demand; dropped on
/// an error, so the next refresh dials afresh: the coordinator may be back on its address).
async fn refresh(
    url: &str,
    options: &ConnectOptions,
    client: &mut Option<Client>,
) -> Result<(pb::StatsResponse, Vec<pb::WorkerInfo>), String> {
    let c = match client.take() {
        Some(c) => c,
        None => Client::connect_with(url, options)
            .await
            .map_err(|e| e.to_string())?,
    };
    let both = (c.stats().await, c.workers("").await);
    match both {
        (Ok(stats), Ok(workers)) => {
            *client = Some(c);
            Ok((stats, workers))
        }
        (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
    }
}

/// Runs the view until `q` or Ctrl-C.
pub(crate) async fn run(url: &str, options: &ConnectOptions) -> Result<(), String> {
    let mut terminal = ratatui::try_init().map_err(|e| format!("the terminal: {e}"))?;
    let outcome = live(&mut terminal, url, options).await;
    ratatui::restore();
    outcome
}

async fn live(
    terminal: &mut ratatui::DefaultTerminal,
    url: &str,
    options: &ConnectOptions,
) -> Result<(), String> {
    let mut view = View {
        url: url.to_owned(),
        ..View::default()
    };
    let mut client = None;
    let mut last: Option<(Instant, pb::StatsResponse)> = None;
    loop {
        match refresh(url, options, &mut client).await {
            Ok((stats, workers)) => {
                let now = Instant::now();
                view.rates = match &last {
                    Some((at, before)) => rates(before, &stats, now - *at),
                    None => Vec::new(),
                };
                last = Some((now, stats.clone()));
                view.stats = stats;
                view.workers = workers;
                view.reconnecting = None;
            }
            Err(why) => view.reconnecting = Some(why.lines().next().unwrap_or_default().to_owned()),
        }
        terminal
            .draw(|frame| render(frame, &view))
            .map_err(|e| format!("drawing: {e}"))?;
        let until = Instant::now() + REFRESH;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let key = tokio::task::block_in_place(|| -> std::io::Result<Option<Event>> {
                if event::poll(left)? {
                    event::read().map(Some)
                } else {
                    Ok(None)
                }
            })
            .map_err(|e| format!("reading keys: {e}"))?;
            if let Some(Event::Key(k)) = key {
                let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if k.code == KeyCode::Char('q') || k.code == KeyCode::Esc || ctrl_c {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    fn screen(view: &View) -> String {
        let mut terminal = Terminal::new(TestBackend::new(120, 20)).expect("terminal");
        terminal.draw(|f| render(f, view)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_view_shows_functions_workers_and_a_reconnecting_line() {
        let mut view = View {
            url: "http://127.0.0.1:50051".into(),
            stats: pb::StatsResponse {
                functions: vec![pb::FunctionStats {
                    function: "echo".into(),
                    pending: 12,
                    running: 3,
                    succeeded: 40,
                    workers_live: 1,
                    slots_mean: 4.0,
                    slots_learned: 8,
                    cost_usd: 0.000123,
                    ..Default::default()
                }],
                uptime_ms: 42_000,
                ..Default::default()
            },
            rates: vec![("echo".into(), 17.0)],
            workers: vec![pb::WorkerInfo {
                worker_id: "w1-echo".into(),
                function: "echo".into(),
                state: pb::WorkerState::Active as i32,
                running_tasks: 3,
                slots: 4,
                age_ms: 9_000,
                last_sample: Some(pb::ResourceSample {
                    cpu: 0.25,
                    memory_used_bytes: 50,
                    memory_limit_bytes: 100,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            reconnecting: None,
        };
        let text = screen(&view);
        for want in [
            "up 42s", "FUNCTION", "echo", "12", "17.0", "0.000123", "w1-echo", "active", "3/4", "25%", "50%",
            "9s",
        ] {
            assert!(text.contains(want), "missing {want:?}:\n{text}");
        }
        view.reconnecting = Some("connection refused".into());
        let text = screen(&view);
        assert!(
            text.contains("unreachable, reconnecting (connection refused)"),
            "{text}"
        );
        assert!(text.contains("w1-echo"), "the last figures stay: {text}");
    }

    #[test]
    fn the_view_shows_the_workers_lives_where_there_is_anything_to_show() {
        let mut view = View {
            url: "http://127.0.0.1:50051".into(),
            stats: pb::StatsResponse {
                functions: vec![pb::FunctionStats {
                    function: "wait".into(),
                    duration_bound_ms: 2_410,
                    admitting_share: 0.419,
                    life_wanted_ms: 14_500,
                    refused_for_time: 7,
                    taken_late: 3,
                    successors_started: 4,
                    successor_lead_ms: 210,
                    handover_wait_ms: 31,
                    handover_wait_longest_ms: 16,
                    killed_at_deadline: 0,
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        let text = screen(&view);
        for want in [
            "worker lives",
            "REFUSED",
            "SUCCESSORS",
            "HAND-OVER",
            "2.41",
            "ADMITS%",
            " 42 ",
            "LIFE WANTED",
            "14.50",
            "0.21",
            "31/16",
        ] {
            assert!(text.contains(want), "missing {want:?}:\n{text}");
        }
        // Nothing to show: no box.
        view.stats.functions[0] = pb::FunctionStats {
            function: "wait".into(),
            ..Default::default()
        };
        assert!(!screen(&view).contains("worker lives"));
    }

    #[test]
    fn rates_are_tasks_finished_per_second_since_the_last_refresh() {
        let at = |n| pb::StatsResponse {
            functions: vec![pb::FunctionStats {
                function: "f".into(),
                succeeded: n,
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = rates(&at(10), &at(30), Duration::from_secs(2));
        assert_eq!(r, vec![("f".to_string(), 10.0)]);
    }
}
