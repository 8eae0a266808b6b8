//! `coe run`, `coe check` and `coe replay` against the real sandbox.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn coe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coe"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

/// Writes `name` in `dir` (a test's own directory, removed when the test ends).
fn temp_file(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Asserts exit code 0, showing stderr when it is not.
fn assert_success(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts exit code 0 and returns stdout's JSON lines.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert_success(out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn run_prints_the_json_outcome() {
    let out = coe(&[
        "run",
        &fixture("examples/max_of_three.py"),
        "--test",
        "assert max_of_three(1, 1, 1) == 1",
        "--test",
        "assert max_of_three(3, 2, 1) == 3",
        "--json",
    ]);
    assert_success(&out);
    let value = json(&out);
    assert_eq!(value["status"], "failed");
    assert_eq!(value["tests_passed"], 1);
    assert_eq!(value["tests_total"], 2);
    assert_eq!(value["tests"][1]["error"]["type"], "AssertionError");
    assert_eq!(value["error"]["type"], "AssertionError");
    assert!(value["elapsed_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(value["stdout"], "");
}

#[test]
fn run_exits_0_whatever_the_program_did() {
    let temp = tempfile::tempdir().unwrap();
    let program = temp_file(&temp, "loop.py", "while True:\n    pass\n");
    let out = coe(&[
        "run",
        program.to_str().unwrap(),
        "--timeout-ms",
        "200",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["status"], "timeout");
    let text = coe(&["run", program.to_str().unwrap(), "--timeout-ms", "200"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("status: timeout"));
}

#[test]
fn run_with_setup_and_usage_errors() {
    let temp = tempfile::tempdir().unwrap();
    let setup = temp_file(&temp, "setup.py", "K = 10\n");
    let program = temp_file(&temp, "uses_setup.py", "def f():\n    return K\n");
    let out = coe(&[
        "run",
        program.to_str().unwrap(),
        "--setup",
        setup.to_str().unwrap(),
        "--test",
        "assert f() == 10",
        "--json",
    ]);
    assert_eq!(json(&out)["status"], "passed");
    assert_eq!(coe(&["run"]).status.code(), Some(2));
    assert_eq!(coe(&["run", "/nonexistent.py"]).status.code(), Some(2));
    assert_eq!(
        coe(&["run", program.to_str().unwrap(), "--timeout-ms", "x"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn check_runs_every_task_in_order() {
    let temp = tempfile::tempdir().unwrap();
    let tasks = temp_file(
        &temp,
        "tasks.jsonl",
        concat!(
            r#"{"task_id": "a", "text": "", "code": "x = 1", "reference": "x = 2", "tests": ["assert x == 2"]}"#,
            "\n",
            r#"{"task_id": 7, "code": "def f(:", "tests": []}"#,
            "\n",
            r#"{"task_id": "c", "code": "y = 3", "tests": ["assert y == 3"]}"#,
            "\n"
        ),
    );
    let lines = json_lines(&coe(&["check", tasks.to_str().unwrap(), "--jobs", "2"]));
    let summary: Vec<(&str, &str)> = lines
        .iter()
        .map(|v| {
            (
                v["task_id"].as_str().unwrap(),
                v["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("a", "failed"), ("7", "syntax_error"), ("c", "passed")]
    );

    let out = coe(&["check", tasks.to_str().unwrap(), "--field", "reference"]);
    // Tasks without a reference are reported and the exit code says so; the rest still ran.
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no reference"));
}

/// Worker processes (the default) and threads give the same lines in the same order, the same
/// messages and the same exit code, whatever the tasks hold.
#[test]
fn check_with_worker_processes_equals_threads() {
    let temp = tempfile::tempdir().unwrap();
    let tasks = temp_file(
        &temp,
        "spread.jsonl",
        concat!(
            r#"{"task_id": "a", "code": "x = 1", "reference": "x = 2", "tests": ["assert x == 2"]}"#,
            "\n",
            r#"{"task_id": "b", "code": "y = 1", "tests": ["assert y == 1"]}"#,
            "\n",
            "not json\n",
            r#"{"task_id": "c", "code": "z = 1", "reference": "z = (", "tests": []}"#,
            "\n",
            r#"{"task_id": "d", "code": "", "reference": "while True: pass", "tests": []}"#,
            "\n",
            r#"{"task_id": "e", "code": "", "reference": "import sys; sys.exit(3)", "tests": []}"#,
            "\n"
        ),
    );
    let path = tasks.to_str().unwrap();
    let run = |parallel: &str| {
        let out = coe(&[
            "check",
            path,
            "--field",
            "reference",
            "--jobs",
            "3",
            "--parallel",
            parallel,
            "--timeout-ms",
            "3000",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // Wall-clock figures differ between runs; everything else must not.
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut()
                    .unwrap()
                    .retain(|k, _| !k.ends_with("_ms"));
                v
            })
            .collect();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), lines, stderr)
    };
    let processes = run("processes");
    let threads = run("threads");
    assert_eq!(processes, threads);
    let (code, lines, stderr) = processes;
    assert_eq!(code, Some(2));
    let ids: Vec<&str> = lines
        .iter()
        .map(|v| v["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "c", "d", "e"]);
    assert!(stderr.contains("spread.jsonl:3: not a task"), "{stderr}");
    assert!(stderr.contains("task b: has no reference"), "{stderr}");
}

#[test]
fn check_reports_malformed_lines_and_goes_on() {
    let temp = tempfile::tempdir().unwrap();
    let tasks = temp_file(
        &temp,
        "mixed.jsonl",
        "{\"task_id\": \"ok\", \"code\": \"\", \"tests\": []}\nnot json\n{\"task_id\": \"ok2\", \"code\": \"\", \"tests\": []}\n",
    );
    let out = coe(&["check", tasks.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("mixed.jsonl:2: not a task"));
}

#[test]
fn check_reads_mbpp_rows() {
    let temp = tempfile::tempdir().unwrap();
    let rows: String = std::fs::read_to_string(fixture("mbpp/mbpp.jsonl"))
        .unwrap()
        .lines()
        // Tasks 3-7; task 2 compares set iteration order (see `cargo xtask compat`).
        .skip(2)
        .take(5)
        .map(|l| format!("{l}\n"))
        .collect();
    let tasks = temp_file(&temp, "mbpp5.jsonl", &rows);
    // A generous limit: the default one is wall-clock time, which a loaded machine (tests run
    // in parallel) can push these real programs over.
    let out = coe(&["check", tasks.to_str().unwrap(), "--timeout-ms", "30000"]);
    assert_success(&out);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["status"], "passed", "{line}");
        assert_eq!(value["tests_total"], 3);
    }
}

#[test]
fn replay_plays_the_example() {
    let lines = json_lines(&coe(&[
        "replay",
        &fixture("examples/max_of_three.json"),
        &fixture("examples/max_of_three.dsl"),
        "--json",
    ]));
    assert_eq!(lines.len(), 3, "two turns and a summary");
    assert_eq!(lines[0]["command"], "REPW 5 >>>c < largest >>>c > largest");
    // +1 for the repair, -0.01 for the turn (DESIGN.md section 7).
    assert!((lines[0]["reward"].as_f64().unwrap() - 0.99).abs() < 1e-6);
    assert_eq!(lines[0]["solved"], true);
    assert_eq!(lines[1]["command"], "EXIT");
    assert_eq!(lines[2]["solved"], true);
    assert_eq!(lines[2]["turns"], 2);
    assert!((lines[2]["return"].as_f64().unwrap() - 0.98).abs() < 1e-6);
    insta::assert_snapshot!(lines[0]["observation"].as_str().unwrap());

    let text = coe(&[
        "replay",
        &fixture("examples/max_of_three.json"),
        &fixture("examples/max_of_three.dsl"),
    ]);
    insta::assert_snapshot!("replay_text", String::from_utf8_lossy(&text.stdout));
}

#[test]
fn replay_rejects_a_bad_task() {
    let temp = tempfile::tempdir().unwrap();
    let task = temp_file(&temp, "bad-task.json", "{\"code\": 1}");
    let edits = temp_file(&temp, "edits.dsl", "EXIT\n");
    let out = coe(&["replay", task.to_str().unwrap(), edits.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a task"));
}

#[test]
fn model_commands_refuse_bad_input_with_exit_2() {
    let temp = tempfile::tempdir().unwrap();
    let prompt = temp_file(&temp, "prompt.txt", "hello");
    let missing = coe(&[
        "generate",
        "--prompt-file",
        prompt.to_str().unwrap(),
        "--model",
        "/nonexistent/model.gguf",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no model at"));

    let corrupt = temp_file(&temp, "corrupt.gguf", "GGUF\u{3}\0\0\0 not really");
    let out = coe(&[
        "generate",
        "--prompt-file",
        prompt.to_str().unwrap(),
        "--model",
        corrupt.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("GGUF"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Tests that already pass: nothing to repair (decided before any model is loaded).
    let fine = temp_file(&temp, "fine.py", "def f():\n    return 1\n");
    let out = coe(&[
        "repair",
        fine.to_str().unwrap(),
        "--test",
        "assert f() == 1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already pass"));
    assert_eq!(
        coe(&["repair", fine.to_str().unwrap()]).status.code(),
        Some(2),
        "no --test"
    );

    let out = coe(&["eval", "/nonexistent/tasks.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    let out = coe(&["eval", "/nonexistent/tasks.jsonl", "--shard", "2/2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("I/N"));
    let out = coe(&["train", "sft", "--config", "/nonexistent/sft.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let config = fixture("configs/rl-short.toml");
    let out = coe(&[
        "train",
        "rl",
        "--config",
        &config,
        "--init-adapter",
        "/nonexistent/adapter.safetensors",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no adapter file"));

    // A build without the `cuda` feature says how to get one, before loading any model.
    if !cfg!(feature = "cuda") {
        let tasks = fixture("eval/mbpp-synthetic-validation.jsonl");
        let out = coe(&["eval", &tasks, "--device", "cuda", "--limit", "1"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--features cuda"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn repair_plays_the_default_policy_on_the_example() {
    if coe_cache::default_model_for_tests().unwrap().is_none() {
        return;
    }
    let task: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("examples/max_of_three.json")).unwrap(),
    )
    .unwrap();
    let program = fixture("examples/max_of_three.py");
    let mut args = vec![
        "repair",
        &program,
        "--task",
        task["text"].as_str().unwrap(),
        "--max-turns",
        "2",
        "--json",
    ];
    for test in task["tests"].as_array().unwrap() {
        args.extend(["--test", test.as_str().unwrap()]);
    }
    let out = coe(&args);
    assert_success(&out);
    let first = json(&out);
    assert!(first["solved"].is_boolean(), "{first}");
    let turns = first["turns"].as_array().unwrap();
    assert!((1..=2).contains(&turns.len()), "{first}");
    for turn in turns {
        assert!(
            turn["output"].is_string() && turn["observation"].is_string(),
            "{turn}"
        );
    }
    assert!(
        first["final_program"]
            .as_str()
            .unwrap()
            .contains("def max_of_three")
    );
    assert!(first["diff"].is_string());
    // A greedy episode, then sampled ones until one passes: at most 5 by default.
    let played = first["episodes_played"].as_u64().unwrap();
    let shown = first["episode"].as_u64().unwrap();
    assert!(
        (1..=5).contains(&played) && (1..=played).contains(&shown),
        "{first}"
    );
    if first["solved"] == false {
        assert_eq!(played, 5, "{first}");
    } else {
        assert_eq!(shown, played, "it stops at the first that passes: {first}");
    }
    // A spent time budget starts no sampled episode after the greedy one.
    let mut budget = args.clone();
    budget.extend(["--time-budget-s", "0"]);
    let out = json(&coe(&budget));
    assert_eq!(out["episodes_played"], 1, "{out}");
    // With one episode it is the greedy one: the same program and tests give the same repair.
    args.extend(["--samples", "1"]);
    let greedy = json(&coe(&args));
    assert_eq!(greedy["episodes_played"], 1);
    assert_eq!(greedy["episode"], 1);
    assert_eq!(json(&coe(&args)), greedy);
}

#[test]
fn an_eval_summary_says_how_it_played() {
    if coe_cache::default_model_for_tests().unwrap().is_none() {
        return;
    }
    let tasks = fixture("eval/mbpp-synthetic-validation.jsonl");
    let out = coe(&["eval", &tasks, "--limit", "1", "--max-turns", "1", "--json"]);
    assert_success(&out);
    let summary = json(&out);
    assert_eq!(summary["tasks"], 1, "{summary}");
    let settings = &summary["settings"];
    // One sample is the greedy episode; the built-in default policy unless told otherwise.
    assert_eq!(settings["temperature"], 0.0, "{summary}");
    assert_eq!(settings["max_turns"], 1, "{summary}");
    assert_eq!(settings["direct"], false, "{summary}");
    assert_eq!(settings["context"], 2048, "{summary}");
    assert!(settings["adapter"].is_string(), "{summary}");
}

#[test]
fn a_stopped_eval_resumes_to_the_straight_runs_result() {
    if coe_cache::default_model_for_tests().unwrap().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tasks = fixture("eval/mbpp-synthetic-validation.jsonl");
    let traces = |name: &str| dir.path().join(name).display().to_string();
    // `coe eval` of the first 3 tasks, 2 samples each, writing traces to `file`.
    let run = |file: &str, max_turns: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            &tasks,
            "--limit",
            "3",
            "--max-turns",
            max_turns,
            "--samples",
            "2",
            "--traces",
            file,
        ];
        args.extend(extra);
        coe(&args)
    };
    let eval = |file: &str, extra: &[&str]| {
        let mut args = vec!["--json"];
        args.extend(extra);
        let out = run(file, "2", &args);
        assert_success(&out);
        let mut summary = json(&out);
        summary.as_object_mut().unwrap().remove("wall_s");
        (summary, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let straight_file = traces("straight.jsonl");
    let (straight, _) = eval(&straight_file, &[]);
    let straight_traces = std::fs::read_to_string(&straight_file).unwrap();
    assert_eq!(straight_traces.lines().count(), 6);

    // Stopped in the middle of the third task's second episode: its first episode written
    // whole, the second cut mid-line.
    let lines: Vec<&str> = straight_traces.lines().collect();
    let stopped = format!(
        "{}\n{}",
        lines[..5].join("\n"),
        &lines[5][..lines[5].len() / 2]
    );
    let resumed_file = traces("resumed.jsonl");
    std::fs::write(&resumed_file, stopped).unwrap();
    // The stopped run's record: the straight run's, not finished.
    let mut record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{straight_file}.run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["complete"], true, "{record}");
    record["complete"] = false.into();
    std::fs::write(format!("{resumed_file}.run.json"), record.to_string()).unwrap();
    // Starting it again without --resume would throw its finished tasks away: refused.
    let out = run(&resumed_file, "2", &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds an unfinished run"),
        "{out:?}"
    );
    let (resumed, log) = eval(&resumed_file, &["--resume"]);
    // Only the third task is played again.
    assert!(log.contains("resuming: 2 of 3 tasks"), "{log}");
    assert_eq!(log.matches(" solved\n").count(), 1, "{log}");
    assert_eq!(resumed, straight);
    assert_eq!(
        std::fs::read_to_string(&resumed_file).unwrap(),
        straight_traces
    );

    // Another run's traces are refused, and kept.
    let out = run(&resumed_file, "1", &["--resume"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("written by another run"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&resumed_file).unwrap(),
        straight_traces
    );
}
