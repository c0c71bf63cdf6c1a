//! `switchyard anycast`: follows a node's `/v1/anycast` and tells a BGP speaker what to
//! announce. Either ExaBGP's text process API on stdout (one flushed line per change; ExaBGP
//! runs this as a `process` with `encoder text`), or a BIRD include file rewritten on each
//! change followed by a reload command. The decisions are the core's (`Follower`); this is
//! the polling, the writing and the running.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::core::anycast::{bird_include, Change, Follower};
use crate::error::Error;
use crate::status::client::fetch_anycast;

/// Where the changes go.
#[derive(Debug, Clone)]
pub enum Speaker {
    /// ExaBGP's text API on stdout.
    ExaBgp,
    /// A BIRD include file and the command that makes BIRD read it again.
    Bird {
        include: PathBuf,
        reload: Vec<String>,
    },
}

/// How `switchyard anycast` runs.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    pub addr: SocketAddr,
    /// How often the node is asked.
    pub interval: Duration,
    /// How long without an answer before withdrawing, until the node has said its own
    /// `hold_down`.
    pub hold_down: Duration,
    pub speaker: Speaker,
}

/// Runs until the process is stopped or, speaking to ExaBGP, until ExaBGP is gone (stdin
/// ends, or stdout cannot be written).
pub async fn follow(opts: FollowOptions) -> Result<(), Error> {
    let mut follower = Follower::new(opts.hold_down);
    // ExaBGP writes to our stdin (an acknowledgement per command) and holds its other end:
    // it is read and dropped, so that a long life of changes never fills the pipe and stalls
    // ExaBGP, and its end means ExaBGP is gone (even killed), and so we go too.
    let exabgp_gone = tokio_util::sync::CancellationToken::new();
    if matches!(opts.speaker, Speaker::ExaBgp) {
        let gone = exabgp_gone.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            gone.cancel();
        });
    }
    // A BIRD file that could not be written, or a reload that failed, is tried again on
    // every tick until it works; the same error is logged once.
    let mut bird_failed: Option<String> = None;
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreachable_logged = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = exabgp_gone.cancelled() => {
                tracing::info!("stdin closed: ExaBGP is gone; stopping");
                return Ok(());
            }
        }
        // A slow answer is as good as none: the follower must keep its pace.
        let limit = opts.interval.max(Duration::from_secs(1));
        let changes = match fetch_anycast(opts.addr, limit).await {
            Ok(report) => {
                unreachable_logged = false;
                follower.seen(&report)
            }
            Err(e) => {
                if !unreachable_logged {
                    tracing::warn!("{e}; withdrawing after the node's hold_down");
                    unreachable_logged = true;
                }
                follower.lost(Instant::now())
            }
        };
        match &opts.speaker {
            Speaker::ExaBgp => {
                if let Some(changes) = changes {
                    if say(&changes).is_err() {
                        // ExaBGP closed the pipe: it is stopping, and so are we.
                        return Ok(());
                    }
                }
            }
            Speaker::Bird { include, reload } => {
                if changes.is_some() || bird_failed.is_some() {
                    let announced = follower.announced();
                    match write_bird(include, reload, &announced).await {
                        Ok(()) => {
                            tracing::info!(
                                announced = ?announced,
                                "wrote {} and ran {}",
                                include.display(),
                                reload.join(" ")
                            );
                            bird_failed = None;
                        }
                        Err(e) => {
                            if bird_failed.as_ref() != Some(&e) {
                                tracing::error!("{e}; retrying");
                            }
                            bird_failed = Some(e);
                        }
                    }
                }
            }
        }
    }
}

fn say(changes: &[Change]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for c in changes {
        writeln!(out, "{}", c.exabgp())?;
        // One line per change, as it happens: ExaBGP reads lines as they come.
        out.flush()?;
        tracing::info!("{}", c.exabgp());
    }
    Ok(())
}

/// Writes the include file (whole, through a rename, so BIRD never reads half of it) and
/// runs the reload command.
async fn write_bird(
    include: &Path,
    reload: &[String],
    announced: &[ipnet::IpNet],
) -> Result<(), String> {
    let tmp = include.with_extension("tmp");
    std::fs::write(&tmp, bird_include(announced))
        .and_then(|()| std::fs::rename(&tmp, include))
        .map_err(|e| {
            format!(
                "cannot write {}: {e}; check that its directory exists and is writable ([anycast] bird_include)",
                include.display()
            )
        })?;
    let Some((program, args)) = reload.split_first() else {
        return Ok(());
    };
    let command = reload.join(" ");
    let run = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(RELOAD_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "{command} failed ({}): {}{}; is BIRD running, and does its config parse? ([anycast] bird_reload)",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Err(e)) => Err(format!(
            "cannot run {command}: {e}; is BIRD installed? ([anycast] bird_reload)"
        )),
        Err(_) => Err(format!("{command} did not finish within {RELOAD_TIMEOUT:?}")),
    }
}

/// A reload that takes longer is killed and tried again.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
