//! Demonstrations generated per second, sandbox verification included: corrupt a reference,
//! run the broken program, replay the repair turn by turn in the sandbox, end with EXIT.

use coe_data::corrupt::Corpus;
use coe_data::demo::{EditRange, make_demo};
use coe_data::split::Split;
use coe_sandbox::Sandbox;
use coe_tool_state::EpisodeConfig;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn demos(c: &mut Criterion) {
    let tasks: Vec<_> = coe_benches::mbpp()
        .expect("MBPP loads")
        .into_iter()
        .filter(|t| Split::of_task_id(&t.task_id) == Some(Split::Train))
        .take(40)
        .collect();
    let corpus = Corpus::from_programs(tasks.iter().map(|t| t.code.as_str()));
    let sandbox = Sandbox::new(&Default::default()).expect("the sandbox starts");
    let mut group = c.benchmark_group("demos");
    // One attempt per task; attempts whose corruption fails no test yield no demo, so the
    // throughput counts attempts (the report divides by the share kept).
    group.throughput(Throughput::Elements(tasks.len() as u64));
    group.sample_size(10);
    group.bench_function("attempts_40_train_tasks", |b| {
        let mut sample = 0u32;
        b.iter(|| {
            sample += 1;
            tasks
                .iter()
                .filter_map(|task| {
                    make_demo(
                        task,
                        &corpus,
                        EditRange::DEFAULT,
                        1,
                        sample,
                        &sandbox,
                        EpisodeConfig::default(),
                    )
                    .expect("no generator bug")
                })
                .count()
        });
    });
    group.finish();
}

criterion_group!(benches, demos);
criterion_main!(benches);
