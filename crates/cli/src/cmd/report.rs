//! `coe report`: the evaluation summaries of several policies on several sets, gathered into
//! one Markdown table (next to the paper's numbers) and one bar chart.

use std::fmt::Write as _;
use std::path::Path;

use coe_trainer::eval::{EvalSummary, Interval, PairedDifference};
use coe_trainer::plot::{PassRates, plot_pass_rates};

use crate::Failure;
use crate::output::print;

/// Policies and sets in the order the report lists them; others follow by name.
const POLICY_ORDER: [&str; 8] = [
    "base",
    "direct",
    "sft",
    "sft-grpo",
    "sft-more",
    "sft-more-grpo",
    "ablation-old",
    "ablation-new",
];
const SET_ORDER: [&str; 3] = [
    "mbpp-synthetic-test",
    "mbpp-synthetic-test-hard",
    "humanevalfix",
];

/// pass@1 and pass@4, in percent.
type PassPair = (f64, f64);

/// A policy folder named `<policy>` + this holds the greedy run of `<policy>` (`coe eval
/// --samples 1`): its pass@1 joins that policy's row instead of making a row of its own.
const GREEDY_SUFFIX: &str = "-greedy";

/// The paper's results (Rainone et al. 2025, DESIGN.md section 1), pass@1 / pass@4 on repairing
/// its own set of faulty MBPP solutions (none of the sets here): model, Chain-of-Edits (SFT +
/// RL), direct answer.
const PAPER: [(&str, PassPair, PassPair); 3] = [
    ("Llama-3.2-1B", (7.82, 11.0), (1.3, 3.1)),
    ("Llama-3.2-3B", (13.8, 19.0), (6.9, 12.0)),
    ("Llama-3.1-8B", (21.7, 32.7), (33.4, 42.9)),
];

fn rank(order: &[&str], name: &str) -> (usize, String) {
    (
        order.iter().position(|o| *o == name).unwrap_or(order.len()),
        name.to_string(),
    )
}

fn sorted_dirs(dir: &Path, order: &[&str]) -> Result<Vec<String>, Failure> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::Input(format!("coe: {}: {e}", dir.display())))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| rank(order, n));
    Ok(names)
}

/// Appends a Markdown table with a column per set and the given rows (label, one cell per set).
fn write_table(md: &mut String, sets: &[String], rows: &[(String, Vec<String>)]) {
    let _ = writeln!(md, "| policy | {} |", sets.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(sets.len()));
    for (label, cells) in rows {
        let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
    }
}

/// Appends, set by set, every pair of policies compared task by task (the later policy in the
/// report's order minus the earlier), so that a reader sees whether a gap between two rows is
/// more than chance even where their own intervals overlap.
fn write_paired_differences<'a>(
    md: &mut String,
    sets: &[String],
    policies: &[String],
    find: &dyn Fn(&str, &str) -> Option<&'a SetResult>,
) {
    let mut lines = Vec::new();
    for set in sets {
        let played: Vec<(&String, &'a SetResult)> = policies
            .iter()
            .filter_map(|p| find(p, set).map(|r| (p, r)))
            .collect();
        for (later, (policy, result)) in played.iter().enumerate() {
            for (earlier, earlier_result) in &played[..later] {
                let Some(gap) = result.summary.paired_difference(&earlier_result.summary) else {
                    continue;
                };
                lines.push(paired_line(set, policy, earlier, &gap));
            }
        }
    }
    if lines.is_empty() {
        return;
    }
    md.push_str(
        "\nPaired by task: pass@1 of one policy minus another's on the tasks both played, in \
         percentage points, with its 95% bootstrap interval (source problems resampled with \
         their pairs); tasks where the first solved a larger / smaller share of its episodes; \
         the two-sided exact sign test over those tasks:\n\n\
         | set | policies | pass@1 difference | tasks better / worse | sign test p | tasks |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    for line in lines {
        md.push_str(&line);
    }
}

fn paired_line(set: &str, first: &str, second: &str, gap: &PairedDifference) -> String {
    let interval = gap.interval.map_or_else(String::new, |i| {
        format!(" [{:+.1} to {:+.1}]", i.low, i.high)
    });
    let p = if gap.sign_test_p >= 0.01 {
        format!("{:.2}", gap.sign_test_p)
    } else {
        format!("{:.1e}", gap.sign_test_p)
    };
    format!(
        "| {set} | {first} - {second} | {:+.2}{interval} | {} / {} | {p} | {} |\n",
        gap.pass_at_1, gap.better, gap.worse, gap.shared_tasks
    )
}

/// One policy's result on one set, and how much of the set it covers.
struct SetResult {
    summary: EvalSummary,
    /// Shard summaries merged (1 for a whole run's `summary.json`).
    shards: usize,
    /// `(found, expected)` shard summaries (`summary-I-of-N.json`) when some are missing: the
    /// cell and the chart then mark the set partial, not passing a part off as the whole.
    missing_shards: Option<(usize, usize)>,
}

/// `Some(n)` for a shard summary's name `summary-I-of-N.json`.
fn shard_count(name: &str) -> Option<usize> {
    let (_, n) = name
        .strip_prefix("summary-")?
        .strip_suffix(".json")?
        .split_once("-of-")?;
    n.parse().ok()
}

/// The files of `dir` whose names start with `prefix` and end with `suffix`, sorted.
fn files_named(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<std::path::PathBuf>, Failure> {
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Failure::Input(format!("coe: {}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// The summary of one policy on one set: `summary.json`, or the merge of the shards'
/// `summary-*.json` (`coe eval --shard I/N --json`); `None` when there is none yet.
fn read_set(dir: &Path) -> Result<Option<SetResult>, Failure> {
    let paths = files_named(dir, "summary", ".json")?;
    let whole = paths
        .iter()
        .any(|p| p.file_name().is_some_and(|n| n == "summary.json"));
    if whole && paths.len() > 1 {
        return Err(Failure::Input(format!(
            "coe: {}: both summary.json and shard summaries (summary-*.json): keep one kind",
            dir.display()
        )));
    }
    let shard_names: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    let mut shards = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Failure::Input(format!("coe: {}: {e}", path.display())))?;
        if text.trim().is_empty() {
            // `coe eval --json > summary.json` still running.
            eprintln!("coe: skipping {} (empty)", path.display());
            continue;
        }
        shards.push(
            serde_json::from_str::<EvalSummary>(text.trim()).map_err(|e| {
                Failure::Input(format!("coe: {}: not an eval summary: {e}", path.display()))
            })?,
        );
    }
    let expected = shard_names
        .iter()
        .filter_map(|n| shard_count(n))
        .max()
        .unwrap_or(0);
    let missing_shards = (shards.len() < expected).then_some((shards.len(), expected));
    let count = shards.len();
    let summary = if shards.len() <= 1 {
        shards.pop()
    } else {
        Some(
            EvalSummary::merge(&shards)
                .map_err(|e| Failure::Input(format!("coe: {}: {e}", dir.display())))?,
        )
    };
    Ok(summary.map(|summary| SetResult {
        summary,
        shards: count,
        missing_shards,
    }))
}

/// One page of every episode of a sharded set (`dir/index.html`), as `coe eval --html` writes
/// for a whole run: the shards' traces (`traces-I-of-N.jsonl`) in task order. Only for a set
/// whose shards are all in, and only for episode traces: a direct-answer set, or shards written
/// without `--traces`, keep their shard pages alone.
fn write_merged_page(dir: &Path, title: &str, summary: &EvalSummary) -> Result<(), Failure> {
    let paths = files_named(dir, "traces-", ".jsonl")?;
    let mut traces = Vec::new();
    for path in &paths {
        let read = coe_data::formats::read_json_lines::<coe_tool_state::Trace>(path)
            .map_err(|e| Failure::Input(format!("coe: {e}")))?;
        match read.strict() {
            Ok(items) => traces.extend(items),
            // Not episodes (a direct-answer set): no episode page to make.
            Err(_) => return Ok(()),
        }
    }
    let order: std::collections::HashMap<&str, usize> = summary
        .per_task
        .iter()
        .map(|t| (t.task_id.as_str(), t.index))
        .collect();
    if traces.is_empty()
        || traces
            .iter()
            .any(|t| !order.contains_key(t.task_id.as_str()))
    {
        return Ok(());
    }
    // A task's samples are consecutive within its shard: group, then put the tasks in order.
    let mut groups: Vec<Vec<coe_tool_state::Trace>> = Vec::new();
    for trace in traces {
        match groups.last_mut() {
            Some(group) if group[0].task_id == trace.task_id => group.push(trace),
            _ => groups.push(vec![trace]),
        }
    }
    groups.sort_by_key(|group| order[group[0].task_id.as_str()]);
    let page = crate::html::write_report(dir, title, summary, &groups)
        .map_err(|e| Failure::Internal(format!("coe: {}: {e}", dir.display())))?;
    eprintln!("coe: wrote {}", page.display());
    Ok(())
}

/// Each task's number of corrupting edits, by its index in `tasks/<set>.jsonl` (an evaluation
/// set `coe-data` made: one line per task, with its `edits`), with its id; `None` where there is
/// no such file (said on stderr) or its tasks were not made by corrupting programs
/// (HumanEvalFix's own bugs). A file that is not an evaluation set is an input error.
fn edit_counts(tasks: &Path, set: &str) -> Result<Option<Vec<(String, usize)>>, Failure> {
    let path = tasks.join(format!("{set}.jsonl"));
    if !path.is_file() {
        eprintln!(
            "coe: no {}: {set} left out of the table by edit count",
            path.display()
        );
        return Ok(None);
    }
    let lines = coe_data::formats::read_json_lines::<coe_data::formats::EvalTask>(&path)
        .and_then(|read| read.strict().map_err(std::io::Error::other))
        .map_err(|e| Failure::Input(format!("coe: {e}")))?;
    if lines.iter().all(|line| line.edits.is_empty()) {
        return Ok(None);
    }
    Ok(Some(
        lines
            .into_iter()
            .map(|line| (line.task.task_id, line.edits.len()))
            .collect(),
    ))
}

/// One policy's episodes on the tasks of one edit count.
#[derive(Debug, Clone, Copy, Default)]
struct EditCountTally {
    solved: usize,
    episodes: usize,
    tasks_solved: usize,
    tasks: usize,
}

impl EditCountTally {
    /// Adds one task's counts; `None` where a count overflows (a summary no run wrote).
    fn add(self, solved: usize, samples: usize) -> Option<Self> {
        Some(Self {
            solved: self.solved.checked_add(solved)?,
            episodes: self.episodes.checked_add(samples)?,
            tasks_solved: self.tasks_solved + usize::from(solved > 0),
            tasks: self.tasks + 1,
        })
    }

    fn cell(&self) -> String {
        if self.tasks == 0 {
            return "-".into();
        }
        let rate = if self.episodes == 0 {
            0.0
        } else {
            100.0 * self.solved as f64 / self.episodes as f64
        };
        format!(
            "{} of {} ({rate:.1}); {} of {} tasks",
            self.solved, self.episodes, self.tasks_solved, self.tasks
        )
    }
}

/// For each set with edit counts, each policy's solved episodes among its tasks of 1, 2, ...
/// corrupting edits: where a policy's repairs come from, which a pass rate alone hides.
/// Tasks are matched to the set's lines by index and id (a summary does not record the file
/// it was made from); a policy whose summary lists no tasks has no row.
fn write_by_edit_count<'a>(
    md: &mut String,
    tasks: &Path,
    sets: &[String],
    policies: &[String],
    find: &dyn Fn(&str, &str) -> Option<&'a SetResult>,
) -> Result<(), Failure> {
    let mut intro_written = false;
    for set in sets {
        let Some(counts) = edit_counts(tasks, set)? else {
            continue;
        };
        let set_file = || tasks.join(format!("{set}.jsonl")).display().to_string();
        // edit count -> one tally per row
        let mut cells: std::collections::BTreeMap<usize, Vec<EditCountTally>> =
            std::collections::BTreeMap::new();
        let mut rows: Vec<String> = Vec::new();
        for policy in policies {
            let Some(result) = find(policy, set) else {
                continue;
            };
            if result.summary.per_task.is_empty() {
                continue;
            }
            let row = rows.len();
            rows.push(match result.missing_shards {
                Some((found, of)) => format!("{policy} (partial: {found} of {of} shards)"),
                None => policy.clone(),
            });
            for task in &result.summary.per_task {
                let edits = match counts.get(task.index) {
                    Some((id, edits)) if *id == task.task_id => *edits,
                    _ => {
                        return Err(Failure::Input(format!(
                            "coe: {policy}/{set}: task {} (index {}) is not task {} of {}",
                            task.task_id,
                            task.index,
                            task.index.saturating_add(1),
                            set_file()
                        )));
                    }
                };
                let cell = cells.entry(edits).or_default();
                cell.resize(rows.len(), EditCountTally::default());
                cell[row] = cell[row].add(task.solved, task.samples).ok_or_else(|| {
                    Failure::Input(format!("coe: {policy}/{set}: episode counts overflow"))
                })?;
            }
        }
        if rows.is_empty() {
            continue;
        }
        if !intro_written {
            md.push_str(
                "\nSolved episodes by the number of edits that corrupted the task: of the \
                 episodes played on such tasks (percent), and the tasks solved at least once:\n",
            );
            intro_written = true;
        }
        let columns: Vec<String> = cells
            .keys()
            .map(|edits| format!("{set}: {edits} edit{}", if *edits == 1 { "" } else { "s" }))
            .collect();
        let table_rows: Vec<(String, Vec<String>)> = rows
            .into_iter()
            .enumerate()
            .map(|(row, label)| {
                let cells = cells
                    .values()
                    .map(|cell| {
                        cell.get(row)
                            .map_or_else(|| "-".into(), EditCountTally::cell)
                    })
                    .collect();
                (label, cells)
            })
            .collect();
        md.push('\n');
        write_table(md, &columns, &table_rows);
    }
    Ok(())
}

/// Reads `dir/<policy>/<set>/summary.json` (what `coe eval --json` prints) or its shards, writes
/// `dir/report.md` and `dir/pass_at_k.svg`, and prints the table; with `tasks`, the evaluation
/// sets' folder, solved episodes by the number of corrupting edits as well.
pub(crate) fn report(dir: &Path, tasks: Option<&Path>) -> Result<(), Failure> {
    let mut results: Vec<(String, String, SetResult)> = Vec::new();
    for policy in sorted_dirs(dir, &POLICY_ORDER)? {
        for set in sorted_dirs(&dir.join(&policy), &SET_ORDER)? {
            let set_dir = dir.join(&policy).join(&set);
            if let Some(result) = read_set(&set_dir)? {
                if result.shards > 1 && result.missing_shards.is_none() {
                    let title = format!(
                        "coe eval: {policy} on {set} ({} shards merged)",
                        result.shards
                    );
                    write_merged_page(&set_dir, &title, &result.summary)?;
                }
                results.push((policy.clone(), set, result));
            }
        }
    }
    if results.is_empty() {
        return Err(Failure::Input(format!(
            "coe: no {}/<policy>/<set>/summary.json (write them with `coe eval --json`)",
            dir.display()
        )));
    }
    let mut sets: Vec<String> = results.iter().map(|r| r.1.clone()).collect();
    sets.sort_by_key(|s| rank(&SET_ORDER, s));
    sets.dedup();
    let mut policies: Vec<String> = results.iter().map(|r| r.0.clone()).collect();
    policies.sort_by_key(|p| rank(&POLICY_ORDER, p));
    policies.dedup();
    let k = results
        .iter()
        .map(|r| r.2.summary.samples)
        .max()
        .unwrap_or(1);
    let find = |policy: &str, set: &str| {
        results
            .iter()
            .find(|r| r.0 == policy && r.1 == set)
            .map(|r| &r.2)
    };

    // A greedy run whose sampled policy is also here joins that policy's row.
    let greedy_of = |policy: &str| format!("{policy}{GREEDY_SUFFIX}");
    let joins_a_row = |policy: &str| {
        policy
            .strip_suffix(GREEDY_SUFFIX)
            .is_some_and(|sampled| policies.iter().any(|p| p == sampled))
    };
    let row_policies: Vec<&String> = policies.iter().filter(|p| !joins_a_row(p)).collect();
    // One row per policy, one cell per set ("-" where the policy has no result there).
    let policy_rows =
        |cell: &dyn Fn(&str, &str, &SetResult) -> String| -> Vec<(String, Vec<String>)> {
            row_policies
                .iter()
                .map(|policy| {
                    let cells = sets
                        .iter()
                        .map(|set| {
                            find(policy, set).map_or_else(|| "-".into(), |r| cell(policy, set, r))
                        })
                        .collect();
                    ((*policy).clone(), cells)
                })
                .collect()
        };
    let interval = |i: Option<Interval>| {
        i.map_or_else(String::new, |i| format!(" [{:.1}-{:.1}]", i.low, i.high))
    };
    let partial = |r: &SetResult| {
        r.missing_shards.map_or_else(String::new, |(found, of)| {
            format!(" **partial: {found} of {of} shards**")
        })
    };
    let pass_rows = policy_rows(&|policy, set, r| {
        let s = &r.summary;
        let greedy = find(&greedy_of(policy), set).map_or_else(String::new, |g| {
            format!(
                "; greedy {:.2}{} ({}x{}){}",
                g.summary.pass_at_1,
                interval(g.summary.pass_at_1_interval),
                g.summary.tasks,
                g.summary.samples,
                partial(g)
            )
        });
        format!(
            "{:.2}{} / {:.2}{} ({}x{}){}",
            s.pass_at_1,
            interval(s.pass_at_1_interval),
            s.pass_at_k,
            interval(s.pass_at_k_interval),
            s.tasks,
            s.samples,
            partial(r)
        ) + &greedy
    });
    let paper_rows: Vec<(String, Vec<String>)> = PAPER
        .iter()
        .map(|(model, coe, direct)| {
            (
                format!("paper: {model}"),
                vec![
                    format!("{:.2} / {:.2}", coe.0, coe.1),
                    format!("{:.2} / {:.2}", direct.0, direct.1),
                ],
            )
        })
        .collect();
    let behaviour_rows = policy_rows(&|_, _, r| {
        let s = &r.summary;
        format!(
            "{:.1} / {:.1} / {:.1}",
            s.mean_turns, s.malformed_rate, s.solved_then_broken_rate
        )
    });
    let mut md = format!(
        "pass@1 / pass@{k} in percent (unbiased estimator over the samples) with 95% intervals \
         (bootstrap over source problems, Wilson where every task scored alike) where the \
         summary has them; tasks x samples per cell; \"greedy\": the policy's greedy pass@1 \
         (its `<policy>{GREEDY_SUFFIX}` run) where there is one.\n\n"
    );
    write_table(&mut md, &sets, &pass_rows);
    md.push_str(
        "\nMean turns per episode / malformed-command rate (percent) / solved-then-broken rate (percent):\n\n",
    );
    write_table(&mut md, &sets, &behaviour_rows);
    write_paired_differences(&mut md, &sets, &policies, &find);
    if let Some(tasks) = tasks {
        if !tasks.is_dir() {
            return Err(Failure::Input(format!(
                "coe: --tasks {}: not a folder (the evaluation sets, e.g. fixtures/eval)",
                tasks.display()
            )));
        }
        write_by_edit_count(&mut md, tasks, &sets, &policies, &find)?;
    }
    md.push_str(
        "\nThe paper's results, for comparison only: pass@1 / pass@4 on its own set of faulty MBPP \
         solutions (none of the sets above), Llama models 7-60x larger than SmolLM2-135M with LoRA \
         rank 16 (Rainone et al. 2025):\n\n",
    );
    write_table(
        &mut md,
        &["Chain-of-Edits (SFT + RL)".into(), "direct answer".into()],
        &paper_rows,
    );

    let md_path = dir.join("report.md");
    coe_cache::write_atomically(&md_path, md.as_bytes())
        .map_err(|e| Failure::Internal(format!("coe: writing {}: {e}", md_path.display())))?;
    // The chart takes sets and policies in the order they first appear.
    let mut ordered: Vec<&(String, String, SetResult)> = results.iter().collect();
    ordered.sort_by_key(|r| (rank(&SET_ORDER, &r.1), rank(&POLICY_ORDER, &r.0)));
    let rows: Vec<PassRates> = ordered
        .into_iter()
        .map(|(policy, set, r)| {
            // The chart marks a partial set as the table does.
            let label = match r.missing_shards {
                Some((found, of)) => format!("{policy} (partial: {found} of {of} shards)"),
                None => policy.clone(),
            };
            (label, set, &r.summary)
        })
        .map(|(policy, set, s)| PassRates {
            set: set.clone(),
            policy,
            pass_at_1: s.pass_at_1,
            pass_at_k: s.pass_at_k,
            pass_at_1_interval: s.pass_at_1_interval.map(|i| (i.low, i.high)),
            pass_at_k_interval: s.pass_at_k_interval.map(|i| (i.low, i.high)),
        })
        .collect();
    let svg_path = dir.join("pass_at_k.svg");
    plot_pass_rates(&rows, k, &svg_path).map_err(|e| Failure::Internal(e.to_string()))?;
    print(&format!(
        "{md}\nwrote {} and {}\n",
        md_path.display(),
        svg_path.display()
    ))
}
