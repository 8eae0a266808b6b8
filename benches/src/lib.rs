//! Criterion benchmarks for coe live in `benches/`; this library is empty. Run them with
//! `cargo bench -p coe-benches`.
