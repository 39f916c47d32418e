//! `--pruning`, `--scorer` and `--merge` of `maskd eval` and `maskd bench`: token
//! pruning settings over the config's `[pruning]`, repeatable so that one command
//! sweeps them (every schedule with every scorer).

use std::str::FromStr;

use crate::config::{parse_schedule, show_schedule, PruneStep, PruningConfig, TokenScorer};

/// A schedule as the command line writes it, `"2:0.6,5:0.5"` or `"none"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule(pub Vec<PruneStep>);

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Schedule, String> {
        parse_schedule(s).map(Schedule)
    }
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct PruningArgs {
    /// Token pruning schedule, BLOCK:KEEP pairs: "2:0.6,5:0.5" keeps 60 % of the tokens
    /// after block 2 and half of those after block 5; "none" runs the full graph.
    /// Repeat to sweep [default: the config's [pruning], else none].
    #[arg(long = "pruning", value_name = "SCHEDULE")]
    pub schedules: Vec<Schedule>,
    /// What ranks the tokens (pruning.scorer); repeat to sweep [default: the config's,
    /// else norm].
    #[arg(long = "scorer", value_enum, value_name = "SCORER")]
    pub scorers: Vec<TokenScorer>,
    /// Merge dropped tokens into one attention-weighted context token (pruning.merge).
    #[arg(long)]
    pub merge: bool,
}

impl PruningArgs {
    /// Every schedule with every scorer, over `base` (the config's `[pruning]`); just
    /// `base` when no flag is given. A schedule of "none" is one variant whatever the
    /// scorers, since nothing is scored.
    pub fn variants(&self, base: &PruningConfig) -> Vec<PruningConfig> {
        let schedules: Vec<Vec<PruneStep>> = if self.schedules.is_empty() {
            vec![base.schedule.clone()]
        } else {
            self.schedules.iter().map(|s| s.0.clone()).collect()
        };
        let scorers = if self.scorers.is_empty() {
            vec![base.scorer]
        } else {
            self.scorers.clone()
        };
        let mut out = Vec::with_capacity(schedules.len() * scorers.len());
        for schedule in &schedules {
            for &scorer in &scorers {
                let v = PruningConfig {
                    schedule: schedule.clone(),
                    scorer,
                    merge: base.merge || self.merge,
                };
                if !(v.schedule.is_empty() && out.iter().any(|o: &PruningConfig| o.is_off())) {
                    out.push(v);
                }
            }
        }
        out
    }
}

/// How a report names a pruning setting: `none`, or `2:0.6,5:0.5 norm` (`+merge`).
pub fn label(p: &PruningConfig) -> String {
    if p.is_off() {
        return "none".into();
    }
    format!(
        "{} {}{}",
        show_schedule(&p.schedule),
        p.scorer.as_str(),
        if p.merge { " +merge" } else { "" }
    )
}

/// The flags that make a child process run `p` (what [`PruningArgs`] parses back).
pub fn flags(p: &PruningConfig) -> Vec<String> {
    let mut out = vec![
        "--pruning".to_string(),
        show_schedule(&p.schedule),
        "--scorer".into(),
        p.scorer.as_str().into(),
    ];
    if p.merge {
        out.push("--merge".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_sweep_every_schedule_with_every_scorer_once() {
        let args = PruningArgs {
            schedules: vec![
                "none".parse().unwrap(),
                "2:0.5".parse().unwrap(),
                "1:0.5,4:0.5".parse().unwrap(),
            ],
            scorers: vec![TokenScorer::Attention, TokenScorer::Random],
            merge: false,
        };
        let labels: Vec<String> = args
            .variants(&PruningConfig::default())
            .iter()
            .map(label)
            .collect();
        assert_eq!(
            labels,
            [
                "none",
                "2:0.5 attention",
                "2:0.5 random",
                "1:0.5,4:0.5 attention",
                "1:0.5,4:0.5 random"
            ]
        );
        let base = PruningConfig {
            schedule: parse_schedule("3:0.6").unwrap(),
            scorer: TokenScorer::Attention,
            merge: true,
        };
        let only = PruningArgs::default().variants(&base);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0], base);
        assert_eq!(
            flags(&base),
            ["--pruning", "3:0.6", "--scorer", "attention", "--merge"]
        );
        assert!("2:1.5".parse::<Schedule>().is_err());
    }
}
