//! Blame asked of peers, as SWIM asks before it suspects a member (ping-req), applied to
//! origins: when this node's probes of an origin start failing, it asks a few peers in other
//! regions to probe that origin now before it broadcasts the origin down, and the answers
//! decide whose fault it is ([`Verdict`]): the origin's (they fail too: the row counts
//! everywhere), the path's (they reach it: the row counts for this node's region only), or
//! nobody's known (no answer: the row counts as before).
//!
//! A node whose own probes fail while the mesh reaches most of what it monitors is *sick*
//! ([`is_sick`]): its rows stop counting anywhere (it withdraws them from the mesh and steers
//! with the mesh's view) until it agrees with the mesh again. Plain code over data; the mesh
//! glue does the asking.

use std::time::Duration;

use switchyard_geo::Region;
use switchyard_gossip::hash::{fnv1a, FNV_OFFSET};
pub use switchyard_gossip::{ProbeOutcome, Verdict};

/// How many peers are asked about one origin.
pub const HELPERS: usize = 3;

/// A node is sick when at least this many of the origins it monitors are down by its path
/// alone...
pub const SICK_MIN: usize = 2;

/// ...and they are more than half of the origins it has checked.
pub fn is_sick(path_down: usize, checked: usize) -> bool {
    path_down >= SICK_MIN && path_down * 2 > checked
}

/// What the peers asked found, as a verdict: more of them reach the origin than fail to, so
/// only the path from here is down; more (or as many) fail, so the origin is down; nobody
/// answered with a result, so it stays unconfirmed.
pub fn decide(answers: &[(String, Option<ProbeOutcome>)]) -> Verdict {
    let (mut up, mut down) = (0, 0);
    for (_, a) in answers {
        match a {
            Some(ProbeOutcome::Up { .. }) => up += 1,
            Some(ProbeOutcome::Down { .. }) => down += 1,
            Some(ProbeOutcome::Unknown { .. }) | None => {}
        }
    }
    if up + down == 0 {
        Verdict::Unconfirmed
    } else if up > down {
        Verdict::Path
    } else {
        Verdict::Origin
    }
}

/// Picks up to `k` of `candidates` (live peers and their regions) to ask: one per region
/// other than `mine` first, then more from other regions, then from `mine` (a peer next door
/// shares more of this node's path, so it says less about it). `seed` orders the candidates
/// within each rank, so that successive asks spread over the mesh.
pub fn pick_helpers(
    candidates: &[(String, Region)],
    mine: Region,
    k: usize,
    seed: u64,
) -> Vec<String> {
    let mut ranked: Vec<(u8, u64, &str, Region)> = candidates
        .iter()
        .map(|(id, r)| {
            let h = fnv1a(FNV_OFFSET ^ seed, id.as_bytes());
            (u8::from(*r == mine), h, id.as_str(), *r)
        })
        .collect();
    ranked.sort();
    let mut picked: Vec<(&str, Region)> = Vec::with_capacity(k);
    // First pass: one per other region; then the rest in rank order.
    for &(_, _, id, r) in ranked.iter().filter(|c| c.0 == 0) {
        if picked.len() < k && !picked.iter().any(|(_, pr)| *pr == r) {
            picked.push((id, r));
        }
    }
    for &(_, _, id, r) in &ranked {
        if picked.len() < k && !picked.iter().any(|(p, _)| *p == id) {
            picked.push((id, r));
        }
    }
    picked.into_iter().map(|(id, _)| id.to_string()).collect()
}

/// One peer's answer in words, for status and the log.
pub fn describe(answer: &Option<ProbeOutcome>) -> String {
    match answer {
        Some(ProbeOutcome::Up { rtt_us }) => format!(
            "up {:.1} ms",
            Duration::from_micros(u64::from(*rtt_us)).as_secs_f64() * 1000.0
        ),
        Some(ProbeOutcome::Down { reason }) => format!("down: {reason}"),
        Some(ProbeOutcome::Unknown { why }) => format!("no verdict: {why}"),
        None => "no answer".into(),
    }
}

/// What a verdict means, for explain and the log.
pub fn meaning(v: Verdict) -> &'static str {
    match v {
        Verdict::Pending => "peers are being asked to probe it",
        Verdict::Origin => "the peers asked fail too: the origin is down",
        Verdict::Path => {
            "the peers asked reach it: only the path from this node is down (counts for its region, not globally)"
        }
        Verdict::Unconfirmed => "no peer answered: counted as down",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Region::*;

    fn up() -> Option<ProbeOutcome> {
        Some(ProbeOutcome::Up { rtt_us: 1200 })
    }
    fn down() -> Option<ProbeOutcome> {
        Some(ProbeOutcome::Down {
            reason: "refused".into(),
        })
    }
    fn unknown() -> Option<ProbeOutcome> {
        Some(ProbeOutcome::Unknown {
            why: "not in config".into(),
        })
    }
    fn answers(a: &[Option<ProbeOutcome>]) -> Vec<(String, Option<ProbeOutcome>)> {
        a.iter()
            .enumerate()
            .map(|(i, o)| (format!("n{i}"), o.clone()))
            .collect()
    }

    #[test]
    fn the_answers_decide_whose_fault_it_is() {
        assert_eq!(decide(&answers(&[down(), down(), down()])), Verdict::Origin);
        assert_eq!(decide(&answers(&[up(), up(), None])), Verdict::Path);
        assert_eq!(decide(&answers(&[up(), down(), up()])), Verdict::Path);
        assert_eq!(
            decide(&answers(&[up(), down()])),
            Verdict::Origin,
            "a tie blames the origin"
        );
        assert_eq!(decide(&answers(&[None, unknown()])), Verdict::Unconfirmed);
        assert_eq!(decide(&[]), Verdict::Unconfirmed, "nobody to ask");
    }

    #[test]
    fn helpers_come_from_other_regions_first_one_per_region() {
        let c: Vec<(String, Region)> = [
            ("w2", Weu),
            ("w3", Weu),
            ("n1", Wnam),
            ("n2", Wnam),
            ("s1", Seas),
        ]
        .iter()
        .map(|(id, r)| (id.to_string(), *r))
        .collect();
        for seed in 0..20 {
            let picked = pick_helpers(&c, Weu, 3, seed);
            assert_eq!(picked.len(), 3);
            let regions: Vec<Region> = picked
                .iter()
                .map(|p| c.iter().find(|(id, _)| id == p).unwrap().1)
                .collect();
            assert!(
                regions.contains(&Wnam) && regions.contains(&Seas),
                "{picked:?}"
            );
            // Two other regions exist: the third pick is another of theirs before WEU.
            assert!(!regions.contains(&Weu), "{picked:?}");
        }
        // Only our own region: asked all the same.
        let same = vec![("w2".to_string(), Weu)];
        assert_eq!(pick_helpers(&same, Weu, 3, 1), vec!["w2".to_string()]);
        assert!(pick_helpers(&[], Weu, 3, 1).is_empty());
        // The seed spreads the asks.
        let many: Vec<(String, Region)> = (0..30).map(|i| (format!("n{i}"), Wnam)).collect();
        let firsts: std::collections::HashSet<String> = (0..20)
            .map(|s| pick_helpers(&many, Weu, 1, s)[0].clone())
            .collect();
        assert!(firsts.len() > 3, "{firsts:?}");
    }

    #[test]
    fn sick_means_most_of_what_it_checks_is_down_by_its_path_alone() {
        assert!(!is_sick(0, 10));
        assert!(!is_sick(1, 1), "one origin is not a pattern");
        assert!(
            !is_sick(2, 6),
            "a cut to one region of three is a path problem"
        );
        assert!(!is_sick(3, 6));
        assert!(is_sick(4, 6));
        assert!(is_sick(2, 2));
    }

    #[test]
    fn answers_in_words() {
        assert_eq!(describe(&up()), "up 1.2 ms");
        assert_eq!(describe(&down()), "down: refused");
        assert_eq!(describe(&None), "no answer");
    }
}
