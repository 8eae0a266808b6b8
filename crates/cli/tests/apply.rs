//! `coe apply` as scripts use it: stdout, stderr and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn coe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coe"))
        .args(args)
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A fresh directory, removed when the test ends.
fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

#[test]
fn repairs_the_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/examples");
    let out = coe(&[
        "apply",
        root.join("max_of_three.py").to_str().unwrap(),
        root.join("max_of_three.dsl").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!(text(&out.stdout));
}

#[test]
fn keeps_crlf_and_stops_at_exit() {
    let temp = temp_dir();
    let dir = temp.path();
    let program = write(dir, "p.py", b"a = 1\r\nb = 2\r\n");
    let edits = write(dir, "e.dsl", b"ADDL 3 >>>c = 3\r\n\r\nEXIT\r\nDELL 1\r\n");
    let out = coe(&["apply", program.to_str().unwrap(), edits.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "a = 1\r\nb = 2\r\nc = 3\r\n");
}

#[test]
fn bad_commands_exit_2_with_the_edits_line() {
    let temp = temp_dir();
    let dir = temp.path();
    let program = write(dir, "p.py", b"a = 1\n");
    let cases: [(&str, &[u8]); 3] = [
        ("parse", b"REPL 1 >>>a = 2\n\nREPL one >>>x\n"),
        ("range", b"DELL 1\nDELL 1\n"),
        ("repw", b"REPW 1 >>>b >>>c\n"),
    ];
    let mut report = String::new();
    for (name, script) in cases {
        let edits = write(dir, &format!("{name}.dsl"), script);
        let out = coe(&["apply", program.to_str().unwrap(), edits.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
        report.push_str(text(&out.stderr));
    }
    insta::assert_snapshot!(report);
}

#[test]
fn unreadable_input_exits_2() {
    let temp = temp_dir();
    let dir = temp.path();
    let program = write(dir, "p.py", b"\xff\xfe");
    let edits = write(dir, "e.dsl", b"EXIT\n");
    let out = coe(&["apply", program.to_str().unwrap(), edits.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not UTF-8 text"));
    let out = coe(&[
        "apply",
        dir.join("missing.py").to_str().unwrap(),
        edits.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read"));
}

#[test]
fn usage_errors_exit_2_and_help_describes_the_tool() {
    assert_eq!(coe(&["apply"]).status.code(), Some(2));
    assert_eq!(coe(&["frobnicate"]).status.code(), Some(2));
    let help = coe(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    insta::assert_snapshot!(text(&help.stdout));
}

#[test]
fn report_gathers_eval_summaries_into_a_table_and_a_chart() {
    let temp = temp_dir();
    let dir = temp.path();
    let summary = |p1: f64, pk: f64| {
        format!(
            "{{\"tasks\":8,\"samples\":4,\"pass_at_1\":{p1},\"pass_at_k\":{pk},\"mean_turns\":3.5,\"malformed_rate\":25.0,\"solved_then_broken_rate\":0.0}}\n"
        )
    };
    // An evaluation still running has left an empty summary: skipped.
    let running = dir.join("direct").join("humanevalfix");
    std::fs::create_dir_all(&running).unwrap();
    write(&running, "summary.json", b"");
    for (policy, set, p1, pk) in [
        ("sft", "humanevalfix", 3.125, 12.5),
        ("base", "humanevalfix", 0.0, 0.0),
        ("base", "mbpp-synthetic-test", 0.0, 0.0),
        // The greedy run of sft (its own folder): joins sft's row.
        ("sft-greedy", "humanevalfix", 6.25, 6.25),
        // A greedy run with no sampled run beside it keeps a row of its own.
        ("rl-greedy", "humanevalfix", 12.5, 12.5),
    ] {
        let cell = dir.join(policy).join(set);
        std::fs::create_dir_all(&cell).unwrap();
        let mut summary = summary(p1, pk);
        if policy.ends_with("-greedy") {
            summary = summary.replace("\"samples\":4", "\"samples\":1");
        }
        write(&cell, "summary.json", summary.as_bytes());
    }
    // Two shards of one set (`coe eval --shard I/2 --json`) are merged from their per-task
    // counts: 1 of 2 tasks solved in every sample, 1 solved in none.
    let shards = dir.join("sft").join("mbpp-synthetic-test");
    std::fs::create_dir_all(&shards).unwrap();
    for (i, solved) in [(0, 4), (1, 0)] {
        let shard = format!(
            "{{\"tasks\":1,\"samples\":4,\"pass_at_1\":0,\"pass_at_k\":0,\"mean_turns\":2,\"malformed_rate\":0,\"solved_then_broken_rate\":0,\"wall_s\":1.5,\"per_task\":[{{\"index\":{i},\"task_id\":\"t{i}\",\"samples\":4,\"solved\":{solved},\"turns\":8,\"malformed_turns\":0,\"solved_then_broken\":0}}]}}\n"
        );
        write(&shards, &format!("summary-{i}-of-2.json"), shard.as_bytes());
        // Each shard's episodes (`--traces`): four samples of its task, no turns taken.
        let trace = format!(
            "{{\"task_id\":\"t{i}\",\"initial_observation\":\"L 1 x = {i}\",\"initial_status\":\"failed\",\"turns\":[],\"end\":\"exit\",\"solved\":{},\"return\":0.0,\"final_program\":\"x = {i}\\n\"}}\n",
            solved > 0
        );
        write(
            &shards,
            &format!("traces-{i}-of-2.jsonl"),
            trace.repeat(4).as_bytes(),
        );
    }
    // Another policy on the same two tasks: 4 of 4 and 2 of 4, compared with sft task by task.
    let grpo = dir.join("sft-grpo").join("mbpp-synthetic-test");
    std::fs::create_dir_all(&grpo).unwrap();
    let task = |i: usize, solved: usize| {
        format!(
            "{{\"index\":{i},\"task_id\":\"t{i}\",\"samples\":4,\"solved\":{solved},\"turns\":8,\"malformed_turns\":0,\"solved_then_broken\":0}}"
        )
    };
    let grpo_summary = format!(
        "{{\"tasks\":2,\"samples\":4,\"pass_at_1\":75,\"pass_at_k\":100,\"mean_turns\":2,\"malformed_rate\":0,\"solved_then_broken_rate\":0,\"per_task\":[{},{}]}}\n",
        task(0, 4),
        task(1, 2)
    );
    write(&grpo, "summary.json", grpo_summary.as_bytes());
    let out = coe(&["report", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(table.contains("| sft | 50.00 ["), "{table}");
    // sft-grpo minus sft: +0 on t0, +50 on t1; better on 1 task, worse on none. Policies with
    // no per-task counts (base here) have nothing to pair.
    assert!(
        table.contains(
            "| mbpp-synthetic-test | sft-grpo - sft | +25.00 [+0.0 to +50.0] | 1 / 0 | 1.00 | 2 |"
        ),
        "{table}"
    );
    assert!(!table.contains("- base |"), "{table}");
    assert!(
        table.contains("\n| set | policies | pass@1 difference | tasks better / worse | sign test p | tasks |\n|---|"),
        "{table}"
    );
    // The shards' episodes on one page, tasks in order, as one run's `--html` would write.
    let page = std::fs::read_to_string(shards.join("index.html")).unwrap();
    assert!(page.contains("2 shards merged"), "{page}");
    let (first, second) = (page.find("x = 0").unwrap(), page.find("x = 1").unwrap());
    assert!(first < second);
    assert!(
        table.contains("(2x4) | 3.12 / 12.50 (8x4); greedy 6.25 (8x1) |"),
        "{table}"
    );
    assert!(!table.contains("| sft-greedy |"), "{table}");
    assert!(
        table.contains("| rl-greedy | - | 12.50 / 12.50 (8x1) |"),
        "{table}"
    );
    // Known sets and policies in their fixed order, a dash where a policy has no result, and
    // the paper's HumanEvalFix numbers beside them.
    assert!(
        table.contains("| policy | mbpp-synthetic-test | humanevalfix |"),
        "{table}"
    );
    assert!(
        table.contains("| base | 0.00 / 0.00 (8x4) | 0.00 / 0.00 (8x4) |"),
        "{table}"
    );
    // The paper's numbers are on its own set of faulty MBPP solutions: a table of their own.
    assert!(
        table.contains("| paper: Llama-3.2-1B | 7.82 / 11.00 | 1.30 / 3.10 |"),
        "{table}"
    );
    assert!(!table.contains("| paper: Llama-3.2-1B | - |"), "{table}");
    assert!(text(&out.stdout).contains("| base | 0.00 / 0.00 (8x4) |"));
    assert!(!table.contains("| direct |"), "{table}");
    assert!(text(&out.stderr).contains("skipping"));
    let svg = std::fs::read_to_string(dir.join("pass_at_k.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("pass@4"));

    // With the evaluation sets (`--tasks`): solved episodes by the number of corrupting edits,
    // for the policies with per-task counts; t0 was corrupted by 1 edit, t1 by 3.
    let tasks = temp_dir();
    let line = |id: &str, edits: &str| {
        format!(
            "{{\"task_id\":\"{id}\",\"text\":\"\",\"code\":\"x = 1\\n\",\"tests\":[\"assert x == 2\"],\"seed\":1,\"sample\":1,\"generator\":1,\"edits\":[{edits}]}}\n"
        )
    };
    let set =
        line("t0", "\"operator\"") + &line("t1", "\"operator\",\"off_by_one\",\"delete_line\"");
    write(tasks.path(), "mbpp-synthetic-test.jsonl", set.as_bytes());
    let report_with_tasks = |tasks: &Path| {
        coe(&[
            "report",
            dir.to_str().unwrap(),
            "--tasks",
            tasks.to_str().unwrap(),
        ])
    };
    // The report of a run that must succeed, as report.md holds it.
    let table_with_tasks = |tasks: &Path| {
        let out = report_with_tasks(tasks);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        std::fs::read_to_string(dir.join("report.md")).unwrap()
    };
    let table = table_with_tasks(tasks.path());
    assert!(
        table.contains(
            "| policy | mbpp-synthetic-test: 1 edit | mbpp-synthetic-test: 3 edits |\n|---|---:|---:|\n\
             | sft | 4 of 4 (100.0); 1 of 1 tasks | 0 of 4 (0.0); 0 of 1 tasks |\n\
             | sft-grpo | 4 of 4 (100.0); 1 of 1 tasks | 2 of 4 (50.0); 1 of 1 tasks |\n"
        ),
        "{table}"
    );
    // A partial run is marked as in the pass table, and an edit count it has not played yet
    // is a dash in its row while the other policy's row counts it.
    let second_shard = shards.join("summary-1-of-2.json");
    let kept_shard = std::fs::read(&second_shard).unwrap();
    std::fs::remove_file(&second_shard).unwrap();
    let table = table_with_tasks(tasks.path());
    assert!(
        table.contains(
            "| sft (partial: 1 of 2 shards) | 4 of 4 (100.0); 1 of 1 tasks | - |\n\
             | sft-grpo | 4 of 4 (100.0); 1 of 1 tasks | 2 of 4 (50.0); 1 of 1 tasks |\n"
        ),
        "{table}"
    );
    std::fs::write(&second_shard, kept_shard).unwrap();
    // A summary whose tasks are not the set's lines is an input error naming both.
    write(
        tasks.path(),
        "mbpp-synthetic-test.jsonl",
        line("t0", "\"operator\"").as_bytes(),
    );
    let out = report_with_tasks(tasks.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("task t1 (index 1) is not task 2 of"),
        "{}",
        text(&out.stderr)
    );
    // A --tasks folder that is not there is named, not silently left out.
    let out = report_with_tasks(Path::new("no/such/folder"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a folder"),
        "{}",
        text(&out.stderr)
    );

    // A run whose shards are not all in is shown, but marked partial.
    let second = shards.join("summary-1-of-2.json");
    let kept = std::fs::read(&second).unwrap();
    std::fs::remove_file(&second).unwrap();
    let out = coe(&["report", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        table.contains("(1x4) **partial: 1 of 2 shards** | 3.12"),
        "{table}"
    );
    std::fs::write(&second, kept).unwrap();

    // A broken summary is named; a folder without any is a usage error.
    write(
        &dir.join("sft").join("humanevalfix"),
        "summary.json",
        b"{oops",
    );
    let out = coe(&["report", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not an eval summary"));
    // A whole run's summary beside shard summaries would count tasks twice: refused.
    std::fs::remove_dir_all(dir.join("sft").join("humanevalfix")).unwrap();
    write(&shards, "summary.json", summary(10.0, 20.0).as_bytes());
    let out = coe(&["report", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("keep one kind"),
        "{}",
        text(&out.stderr)
    );
    let empty_dir = temp_dir();
    let out = coe(&["report", empty_dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("summary.json"));
}

#[test]
fn plot_redraws_a_runs_curves_and_prints_its_metrics_by_window() {
    let dir = temp_dir();
    let mut metrics = String::new();
    for step in 1..=7 {
        metrics.push_str(&format!(
            "{{\"step\":{step},\"solve_rate\":0.{step},\"skipped_groups\":{step}}}\n"
        ));
    }
    write(dir.path(), "metrics.jsonl", metrics.as_bytes());
    let out = coe(&["plot", dir.path().to_str().unwrap(), "--window", "5"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(dir.path().join("plots").join("solve_rate.svg").is_file());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "| steps | solve_rate | skipped_groups |\n|---|---:|---:|\n\
             | 1-5 | 0.300 (0.100-0.500) | 3.000 (1.000-5.000) |\n\
             | 6-7 | 0.650 (0.600-0.700) | 6.500 (6.000-7.000) |\n"
        ),
        "{stdout}"
    );
    // Not a run's folder, or no window at all: usage errors.
    let empty = temp_dir();
    let out = coe(&["plot", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("metrics.jsonl"));
    let out = coe(&["plot", dir.path().to_str().unwrap(), "--window", "0"]);
    assert_eq!(out.status.code(), Some(2));
}
