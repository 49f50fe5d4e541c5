//! Phone parsing on one core (was `loadgen phone-parse`): the server's `PhoneNumber::parse` against the
//! `phonenumber` crate's own `parse` + `is_valid` + `number_type` + country + E.164 formatting (what the
//! server did before), over the same fresh valid US numbers, one number per iteration.
//!
//! ```sh
//! cargo bench -p phone-auth-bench --bench phone_parse
//! cargo bench -p phone-auth-bench --bench phone_parse -- --warm-up-time 1 --measurement-time 2
//! ```

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phone_auth::domain::{PhoneNumber, PhonePolicy};
use phonenumber::metadata::DATABASE;

/// Distinct numbers, +14152000000 on, cycled through.
const COUNT: u64 = 200_000;

/// What the server did before its own parser: the crate's functions, one after the other.
fn crate_path(s: &str) -> bool {
    phonenumber::parse(None, s).is_ok_and(|n| {
        n.is_valid()
            && n.number_type(&DATABASE) != phonenumber::Type::TollFree
            && n.country().id().is_some()
            && !n.format().mode(phonenumber::Mode::E164).to_string().is_empty()
    })
}

fn phone_parse(c: &mut Criterion) {
    let policy = PhonePolicy::default();
    let inputs: Vec<String> = (0..COUNT).map(|i| format!("+1415{:07}", 2_000_000 + i)).collect();
    let ours = inputs
        .iter()
        .filter(|s| PhoneNumber::parse(s, &policy).is_ok())
        .count();
    let theirs = inputs.iter().filter(|s| crate_path(s)).count();
    println!("accepted of {COUNT}: PhoneNumber::parse {ours}, the phonenumber crate's path {theirs}");

    let mut group = c.benchmark_group("phone_parse");
    group.throughput(Throughput::Elements(1));
    let mut next = inputs.iter().cycle();
    group.bench_function("phonenumber_crate", |b| {
        b.iter(|| crate_path(black_box(next.next().map_or("", String::as_str))))
    });
    let mut next = inputs.iter().cycle();
    group.bench_function("PhoneNumber_parse", |b| {
        b.iter(|| PhoneNumber::parse(black_box(next.next().map_or("", String::as_str)), &policy).is_ok())
    });
    group.finish();
}

criterion_group!(benches, phone_parse);
criterion_main!(benches);
