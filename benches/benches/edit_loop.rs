//! The tool's own cost per turn, without Python: parse a command, apply it, render the
//! observation. Workload: every MBPP reference program, with one command per line of each kind
//! (REPL, REPW, ADDL, DELL), so the sizes are those of real repair episodes.

use std::hint::black_box;

use coe_dsl::Command;
use coe_tool_state::{Program, render_observation};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[derive(serde::Deserialize)]
struct MbppRow {
    code: String,
}

/// A fixed feedback of typical size (one failing assert), so rendering cost is realistic.
const FEEDBACK: &str =
    "1 of 3 tests failed.\nFAILED assert max_of_three(1, 2, 3) == 3\n  AssertionError";

/// Each program with the commands to play on it, as the text a model would emit.
fn workload() -> Vec<(String, Vec<String>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/mbpp/mbpp.jsonl");
    let data = std::fs::read_to_string(path).expect("fixtures/mbpp/mbpp.jsonl is readable");
    data.lines()
        .map(|line| serde_json::from_str::<MbppRow>(line).expect("an MBPP row"))
        .map(|row| {
            let program = Program::parse(&row.code);
            let mut commands = Vec::new();
            for (index, text) in program.lines().iter().enumerate() {
                let n = index + 1;
                commands.push(format!("REPL {n} >>>{text}"));
                // A whitespace-free word can never contain the ` >>>` separator.
                if let Some(word) = text.split_whitespace().next() {
                    commands.push(format!("REPW {n} >>>{word} >>>{word}"));
                }
                commands.push(format!("ADDL {n} >>>    pass"));
                commands.push(format!("DELL {n}"));
            }
            (row.code, commands)
        })
        .collect()
}

fn edit_loop(c: &mut Criterion) {
    let workload = workload();
    let commands: usize = workload.iter().map(|(_, commands)| commands.len()).sum();
    let mut group = c.benchmark_group("edit_loop");
    group.throughput(Throughput::Elements(commands as u64));
    group.bench_function("parse_apply_render_mbpp", |b| {
        b.iter(|| {
            let mut rendered = 0usize;
            for (source, commands) in &workload {
                let mut program = Program::parse(source);
                for text in commands {
                    let command =
                        Command::parse(black_box(text)).expect("generated commands parse");
                    program.apply(&command).expect("generated commands apply");
                    rendered += render_observation(&program, FEEDBACK).len();
                }
            }
            black_box(rendered)
        });
    });
    group.finish();
}

criterion_group!(benches, edit_loop);
criterion_main!(benches);
