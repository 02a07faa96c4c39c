//! Case 7: throughput with one vs two Hearth hosts on one PostgreSQL database. The same load
//! (same connections in total) goes to one host, or is split between two processes sharing the
//! database and the data directory (keys, TLS, token issuer), in alternating rounds.

use std::path::Path;
use std::sync::Arc;

use hearth_bench::load::{self, LoadSpec};
use hearth_bench::report::Comparison;
use hearth_bench::servers::ServerProcess;

use crate::{ROUNDS, Scratch, ScratchPg, client_for, get_urls, new_patients, post_urls, seed, start_hearth};

pub async fn run(
    spec: LoadSpec,
    hearth_bin: &Path,
    scratch: &Scratch,
    postgres_url: &str,
    seed_patients: usize,
) -> Result<Vec<Comparison>, String> {
    let pg = ScratchPg::create(postgres_url).await?;
    let first = start_hearth("scale-a", hearth_bin, scratch, Some(&pg.url), &[]);
    let data = scratch.path("scale-a").display().to_string();
    let args: Vec<String> =
        ["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir", &data, "--database-url", &pg.url]
            .map(str::to_owned)
            .to_vec();
    let second = ServerProcess::start("scale-b", hearth_bin, &args, &[], &scratch.path("scale-b.log"));
    let client = client_for(scratch, "scale-a", spec.concurrency);
    let ids = seed(&client, &first, seed_patients).await;
    let one: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| first.url(&format!("Patient/{id}"))).collect());
    let two: Arc<Vec<String>> = Arc::new(
        ids.iter()
            .enumerate()
            .map(|(i, id)| if i % 2 == 0 { &first } else { &second }.url(&format!("Patient/{id}")))
            .collect(),
    );
    let (two_read, one_read) =
        load::alternating(spec, ROUNDS, |s| get_urls(s, &client, two.clone()), |s| get_urls(s, &client, one.clone()))
            .await;
    let (two_create, one_create) = load::alternating(
        spec,
        ROUNDS,
        |s| post_urls(s, &client, vec![first.url("Patient"), second.url("Patient")], new_patients()),
        |s| post_urls(s, &client, vec![first.url("Patient")], new_patients()),
    )
    .await;
    drop((first, second));
    pg.drop_database().await;
    Ok(vec![
        Comparison::new(
            "7 scale",
            ("read Patient, 2 hosts", &two_read),
            ("read Patient, 1 host", &one_read),
            "report",
            None,
        ),
        Comparison::new(
            "7 scale",
            ("create Patient, 2 hosts", &two_create),
            ("create Patient, 1 host", &one_create),
            "report",
            None,
        ),
    ])
}
