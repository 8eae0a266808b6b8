//! `coe eval --html DIR`: one static page (no scripts, no external files) that shows the summary
//! and every episode turn by turn, with the model's command, the tool's feedback and the diff the
//! command made, so a person can see what the model did.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use coe_tool_state::{Effect, Trace, split_observation};
use coe_trainer::eval::EvalSummary;

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An observation's program (without the `L n ` numbers) and its feedback.
fn program_and_feedback(observation: &str) -> (String, &str) {
    let (listing, feedback) = split_observation(observation);
    let program = listing
        .lines()
        .map(|line| {
            // "L 12 code" -> "code"; anything else is kept as it is.
            line.strip_prefix("L ")
                .and_then(|rest| rest.split_once(' ').map(|(_, code)| code).or(Some("")))
                .unwrap_or(line)
        })
        .fold(String::new(), |mut text, line| {
            text.push_str(line);
            text.push('\n');
            text
        });
    (program, feedback.trim_end())
}

/// A line diff as HTML, removed lines red and added lines green; empty when nothing changed.
fn diff_html(before: &str, after: &str) -> String {
    if before == after {
        return String::new();
    }
    let diff = similar::TextDiff::from_lines(before, after);
    let mut out = String::from("<pre class=\"diff\">");
    for group in diff.grouped_ops(1) {
        for op in group {
            for change in diff.iter_changes(&op) {
                let (class, sign) = match change.tag() {
                    similar::ChangeTag::Delete => ("del", '-'),
                    similar::ChangeTag::Insert => ("ins", '+'),
                    similar::ChangeTag::Equal => ("ctx", ' '),
                };
                let _ = write!(
                    out,
                    "<span class=\"{class}\">{sign} {}</span>",
                    escape(change.value().trim_end_matches(['\n', '\r']))
                );
            }
        }
    }
    out.push_str("</pre>");
    out
}

fn effect_text(effect: &Effect) -> String {
    match effect {
        Effect::Edited {
            status,
            tests_passed,
            tests_total,
        } => format!("edited; {status:?}, {tests_passed}/{tests_total} tests pass"),
        Effect::Malformed { message } => format!("malformed: {message}"),
        Effect::Rejected { message } => format!("rejected: {message}"),
        Effect::Exit => "EXIT".into(),
    }
}

fn episode_html(out: &mut String, index: usize, trace: &Trace) {
    let verdict = if trace.solved { "solved" } else { "not solved" };
    let turns = trace.turns.len();
    // Each task's first episode is shown unfolded; the others open with a click.
    let _ = write!(
        out,
        "<details class=\"episode {}\"{}><summary>episode {} &middot; {verdict} &middot; {turns} turn{} &middot; return {:.2}</summary>",
        if trace.solved { "ok" } else { "fail" },
        if index == 0 { " open" } else { "" },
        index + 1,
        if turns == 1 { "" } else { "s" },
        trace.total_reward
    );
    let (mut program, feedback) = program_and_feedback(&trace.initial_observation);
    let _ = write!(
        out,
        "<h4>start</h4><pre class=\"program\">{}</pre><pre class=\"feedback\">{}</pre><ol class=\"turns\">",
        escape(&program),
        escape(feedback)
    );
    for turn in &trace.turns {
        let (after, feedback) = program_and_feedback(&turn.observation);
        let _ = write!(
            out,
            "<li><code class=\"command\">{}</code> <span class=\"effect\">{} &middot; reward {:+.1}</span>{}<pre class=\"feedback\">{}</pre></li>",
            escape(&turn.output),
            escape(&effect_text(&turn.effect)),
            turn.reward,
            diff_html(&program, &after),
            escape(feedback)
        );
        program = after;
    }
    let _ = write!(
        out,
        "</ol><h4>final program</h4><pre class=\"program\">{}</pre></details>",
        escape(&trace.final_program)
    );
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}\
th:first-child,td:first-child{text-align:left}pre{background:#f6f6f6;padding:.5em;overflow-x:auto;margin:.3em 0}\
.diff .del{color:#a00;background:#fee;display:block}.diff .ins{color:#070;background:#efe;display:block}\
.diff .ctx{color:#777;display:block}.feedback{color:#444;font-size:90%}\
details.episode{border-left:4px solid #ccc;padding-left:.6em;margin:.4em 0}details.ok{border-color:#3a3}\
details.fail{border-color:#c44}summary{cursor:pointer}.command{font-weight:bold}.effect{color:#666}\
.task{margin-top:2em}";

/// Writes `dir/index.html` for an evaluation run and returns its path.
pub(crate) fn write_report(
    dir: &Path,
    title: &str,
    summary: &EvalSummary,
    groups: &[Vec<Trace>],
) -> std::io::Result<PathBuf> {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title><style>{STYLE}</style></head><body><h1>{title}</h1>",
        title = escape(title)
    );
    let _ = write!(
        out,
        "<table><tr><th>tasks</th><th>samples</th><th>pass@1</th><th>pass@{k}</th><th>mean turns</th><th>malformed</th><th>solved then broken</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{:.2}%</td><td>{:.2}%</td><td>{:.2}</td><td>{:.1}%</td><td>{:.1}%</td></tr></table>",
        summary.tasks,
        summary.samples,
        summary.pass_at_1,
        summary.pass_at_k,
        summary.mean_turns,
        summary.malformed_rate,
        summary.solved_then_broken_rate,
        k = summary.samples
    );
    out.push_str("<h2>tasks</h2><table><tr><th>task</th><th>solved</th><th>turns</th></tr>");
    let ids: Vec<String> = groups
        .iter()
        .map(|group| escape(group.first().map_or("", |t| t.task_id.as_str())))
        .collect();
    for (i, (group, id)) in groups.iter().zip(&ids).enumerate() {
        let _ = write!(
            out,
            "<tr><td><a href=\"#task-{i}\">{}</a></td><td>{}/{}</td><td>{}</td></tr>",
            id,
            group.iter().filter(|t| t.solved).count(),
            group.len(),
            group.iter().map(|t| t.turns.len()).sum::<usize>()
        );
    }
    out.push_str("</table>");
    for (i, (group, id)) in groups.iter().zip(&ids).enumerate() {
        let _ = write!(out, "<section class=\"task\" id=\"task-{i}\"><h3>{id}</h3>");
        for (j, trace) in group.iter().enumerate() {
            episode_html(&mut out, j, trace);
        }
        out.push_str("</section>");
    }
    out.push_str("</body></html>\n");
    std::fs::create_dir_all(dir)?;
    let path = dir.join("index.html");
    coe_cache::write_atomically(&path, out.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_split_into_program_and_feedback() {
        let (program, feedback) =
            program_and_feedback("L 1 def f():\nL 2     return 1\nL 3 \n***\nAll 2 tests passed.");
        assert_eq!(program, "def f():\n    return 1\n\n");
        assert_eq!(feedback, "All 2 tests passed.");
    }

    #[test]
    fn diffs_mark_removed_and_added_lines_and_escape_code() {
        let html = diff_html("a = 1\nb = a < 2\n", "a = 2\nb = a < 2\n");
        assert!(
            html.contains("<span class=\"del\">- a = 1</span>"),
            "{html}"
        );
        assert!(
            html.contains("<span class=\"ins\">+ a = 2</span>"),
            "{html}"
        );
        assert!(html.contains("b = a &lt; 2"), "{html}");
        assert!(diff_html("x\n", "x\n").is_empty());
    }
}
